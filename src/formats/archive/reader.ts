// Reading a stream of concatenated sbk archives (uncompressed tar): the order and names of the
// entries are checked as they come, every entry and every whole delta is hashed as it is read,
// and the trailer is checked against those hashes before it is handed out.
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import { SbkError, ExitCode } from '../../core/errors.js';
import { isValidVolumeName } from '../../core/layout.js';
import { isSafeMetaPath, metaEntryCost, metaEntryRefusal } from './meta.js';
import {
  CHANGELOG_ENTRY,
  MANIFEST_ENTRY,
  META_PREFIX,
  TRAILER_ENTRY,
  checkManifest,
  deltaPartName,
  legacyManifest,
  verifyTrailer,
  VolumeDigest,
  type EntryDigest,
  type Manifest,
  type Trailer,
} from './manifest.js';
import { corrupt, oneLine, streamFault } from './faults.js';

const MAX_JSON_ENTRY = 16 * 1024 * 1024;
const DELTA_RE = /^([^/]+)\.delta(?:\.(\d{6}))?$/;

export type EntryRole = 'manifest' | 'meta' | 'changelog' | 'delta' | 'trailer';

export interface ArchiveEntry {
  /** 0-based index of the archive in a stream of concatenated archives. */
  archive: number;
  role: EntryRole;
  name: string;
  header: tar.Header;
  /** The archive's manifest (a synthesized one for legacy archives). */
  manifest: Manifest;
  /** For deltas: the volume and part number. */
  volume?: string;
  part?: number;
  /**
   * The entry's bytes; hashed as they are read. Consume it whole or not at all (the reader
   * drains what is left).
   */
  body: AsyncIterable<Buffer>;
  /** For the trailer: the verified trailer. */
  trailer?: Trailer;
}

export interface ReadOptions {
  /** Accept archives of the original Subutai tool (no manifest, no trailer). */
  legacy?: boolean;
  /** Name of the input for messages (a file name, or 'stdin'). */
  source?: string;
}

function parseJson(buf: Buffer, what: string, source: string): Record<string, unknown> {
  try {
    const v = JSON.parse(buf.toString('utf8')) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (err) {
    throw corrupt(source, `${what} is not valid JSON (${oneLine((err as Error).message)})`);
  }
}

async function collect(body: AsyncIterable<Buffer>, limit: number, what: string, source: string): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of body) {
    n += c.length;
    if (n > limit) throw corrupt(source, `${what} is larger than ${limit} bytes`);
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

const once = (buf: Buffer) => (async function* () { yield buf; })();

/** A delta being read: its digest so far, and whether it is one unnumbered part. */
class VolumeHash extends VolumeDigest {
  constructor(
    format: number,
    readonly single: boolean,
  ) {
    super(format);
  }
}

/** What the reader knows of the archive being read (reset at each manifest). */
class ArchiveState {
  digests: EntryDigest[] = [];
  volumeHashes = new Map<string, VolumeHash>();
  volumeIndex = -1;
  sawChangelog = false;
  metaBytes = 0; // of the meta entries (see meta.ts)
  // Names seen: a duplicate could make a restore take the wrong copy.
  seenNames = new Set<string>([MANIFEST_ENTRY]);

  constructor(
    readonly manifest: Manifest,
    readonly legacy: boolean,
    readonly source: string,
  ) {}

  /** Checks an entry after the manifest (its type, place and name) and tells its role. */
  roleOf(header: tar.Header): { role: EntryRole; volume?: string; part?: number } {
    const { source, legacy } = this;
    const name = header.name;
    if (header.type !== 'file' && !(header.type === 'directory' && (name.startsWith(META_PREFIX) || name === 'meta' || name === 'meta/'))) {
      throw corrupt(source, `entry '${name}' is a ${header.type}; sbk archives hold only files and meta/ directories`);
    }
    // tar-stream never ends the body of a directory that declares data: reading it would hang.
    if (header.type === 'directory' && (header.size ?? 0) > 0)
      throw corrupt(source, `directory entry '${name}' declares ${String(header.size)} bytes of data`);
    let result: { role: EntryRole; volume?: string; part?: number };
    const delta = DELTA_RE.exec(name);
    if (name === TRAILER_ENTRY && !legacy) {
      result = { role: 'trailer' };
    } else if (name === 'meta/' || name === 'meta' || name.startsWith(META_PREFIX)) {
      this.checkMeta(header);
      result = { role: 'meta' };
    } else if (name === CHANGELOG_ENTRY && !legacy) {
      if (this.sawChangelog || this.volumeIndex >= 0) throw corrupt(source, `unexpected ${CHANGELOG_ENTRY} here`);
      this.sawChangelog = true;
      result = { role: 'changelog' };
    } else if (delta) {
      const volume = delta[1]!;
      const part = delta[2] === undefined ? undefined : Number(delta[2]);
      this.checkDelta(name, volume, part);
      result = { role: 'delta', volume, part };
    } else {
      throw corrupt(source, `unexpected entry '${name}'`);
    }
    const key = name.replace(/\/$/, '');
    if (this.seenNames.has(key)) throw corrupt(source, `entry '${name}' appears twice`);
    this.seenNames.add(key);
    return result;
  }

  private checkMeta(header: tar.Header): void {
    const { source, legacy } = this;
    const name = header.name;
    const rel = name.replace(/^meta\/?/, '').replace(/\/$/, '');
    if (rel !== '' && !isSafeMetaPath(rel)) throw corrupt(source, `unsafe entry name '${name}'`);
    if (rel === '' && header.type !== 'directory') throw corrupt(source, `entry '${name}' is a ${header.type}, not the meta/ directory`);
    if (this.volumeIndex >= 0 && !legacy) throw corrupt(source, `meta entry '${name}' after the deltas`);
    if (this.sawChangelog) throw corrupt(source, `meta entry '${name}' after the changelog`);
    const size = header.type === 'file' ? (header.size ?? 0) : 0;
    const refusal = metaEntryRefusal(size, this.metaBytes, legacy);
    if (refusal) throw corrupt(source, `meta entry '${name}' ${refusal}`);
    this.metaBytes += metaEntryCost(size);
  }

  /** Deltas come volume by volume in the manifest's order, parts in order from 000000. */
  private checkDelta(name: string, volume: string, part: number | undefined): void {
    const { source } = this;
    if (!isValidVolumeName(volume)) throw corrupt(source, `unsafe volume name in '${name}'`);
    if (this.legacy) {
      if (part !== undefined && part > 0 && !this.volumeHashes.has(volume)) throw corrupt(source, `'${name}' without its earlier parts`);
      return;
    }
    const idx = this.manifest.volumes.findIndex((v) => v.name === volume);
    if (idx < 0) throw corrupt(source, `entry '${name}' names a volume the manifest does not list`);
    const state = this.volumeHashes.get(volume);
    if (idx !== this.volumeIndex) {
      if (idx < this.volumeIndex || state) throw corrupt(source, `entry '${name}' is out of order`);
      if (part !== undefined && part !== 0) throw corrupt(source, `entry '${name}': part 000000 is missing`);
      this.volumeIndex = idx;
    } else if (!state || state.single || part === undefined || part !== state.parts) {
      throw corrupt(source, `entry '${name}' is out of order (expected part ${state ? deltaPartName(volume, state.parts) : '000000'})`);
    }
  }

  /** The running hash of a delta's volume (all its parts). */
  volumeHash(volume: string | undefined, part: number | undefined): VolumeHash | undefined {
    if (!volume) return undefined;
    let v = this.volumeHashes.get(volume);
    if (!v) {
      v = new VolumeHash(this.manifest.format, part === undefined);
      this.volumeHashes.set(volume, v);
    }
    return v;
  }

  verify(buf: Buffer): Trailer {
    return verifyTrailer(parseJson(buf, TRAILER_ENTRY, this.source), this.manifest, this.digests, this.volumeHashes, this.sawChangelog, this.source);
  }
}

/**
 * An entry's body, hashed as it is read (into the entry's digest and, in format 1, its volume's), with errors
 * mapped by `asSbkError`. A consumer that stops early (break) must not close the entry: that
 * would destroy the whole tar stream; `drain` reads and hashes what it left.
 */
function hashedBody(entry: AsyncIterable<Buffer>, vstate: VolumeHash | undefined, asSbkError: (err: unknown) => unknown) {
  const hash = createHash('sha256');
  let size = 0;
  const body = (async function* () {
    try {
      for await (const c of entry) {
        hash.update(c);
        vstate?.bytes(c);
        size += c.length;
        yield c;
      }
    } catch (err) {
      // Read by the consumer, outside readArchives' own catch: its errors must be SbkErrors too.
      throw asSbkError(err);
    }
  })();
  const tracked: AsyncIterable<Buffer> = {
    [Symbol.asyncIterator]() {
      const it = body[Symbol.asyncIterator]();
      return {
        next: () => it.next(),
        return: async () => ({ done: true as const, value: undefined }),
        [Symbol.asyncIterator]() {
          return this;
        },
      };
    },
  };
  return {
    tracked,
    /** Reads what the consumer left; then the digest covers the whole entry. */
    async drain(): Promise<{ size: number; sha256: string }> {
      for await (const _ of body) void _;
      return { size, sha256: hash.digest('hex') };
    },
  };
}

/** The manifest entry that starts an archive, read and checked. */
async function readManifestEntry(entry: AsyncIterable<Buffer>, source: string): Promise<{ manifest: Manifest; buf: Buffer; digest: EntryDigest }> {
  const buf = await collect(entry, MAX_JSON_ENTRY, MANIFEST_ENTRY, source);
  const manifest = checkManifest(parseJson(buf, MANIFEST_ENTRY, source), source);
  const digest = { name: MANIFEST_ENTRY, size: buf.length, sha256: createHash('sha256').update(buf).digest('hex') };
  return { manifest, buf, digest };
}

/**
 * Reads a stream of one or more concatenated sbk archives (uncompressed tar), checking the
 * order and names of entries and every sha256 against the trailer. Yields each entry; the
 * trailer entry is yielded only once the archive it ends has been verified.
 */
export async function* readArchives(input: Readable, opts: ReadOptions = {}): AsyncGenerator<ArchiveEntry> {
  const source = opts.source ?? 'input';
  const extract = tar.extract();
  input.on('error', (err) => extract.destroy(err));
  input.pipe(extract);
  // When the tar is broken, the entry being read fails with a bare "stream was destroyed": the
  // extractor's own error says what happened.
  let extractError: unknown;
  extract.on('error', (err) => {
    extractError ??= err;
  });

  let archive = -1;
  let current: ArchiveState | undefined;
  let lastName = '';

  /** Turns the errors of a broken tar or compressed stream into SbkErrors; others (I/O) pass unchanged. */
  const asSbkError = (err0: unknown): unknown => {
    if (err0 instanceof SbkError) return err0;
    const err = /destroyed|premature/i.test((err0 as Error)?.message ?? '') && extractError ? extractError : err0;
    if (err instanceof SbkError) return err;
    const msg = oneLine((err as Error)?.message ?? String(err));
    const fault = streamFault(err);
    if (fault?.kind === 'tar' && fault.notTar && archive < 0) return new SbkError(`${source}: not a tar stream (${msg})`, ExitCode.badInput);
    if (fault?.kind === 'tar') return corrupt(source, `the tar stream is broken after entry '${lastName}' (${msg})`);
    if (fault?.kind === 'codec') return corrupt(source, `the ${fault.codec} data is corrupt (${msg})`);
    return err;
  };

  try {
    for await (const entry of extract) {
      const header = entry.header;
      const name = header.name;
      lastName = name;

      if (current === undefined) {
        // The first entry of an archive.
        archive++;
        if (name === MANIFEST_ENTRY && header.type === 'file') {
          const { manifest, buf, digest } = await readManifestEntry(entry as AsyncIterable<Buffer>, source);
          current = new ArchiveState(manifest, false, source);
          current.digests.push(digest);
          yield { archive, role: 'manifest', name, header, manifest, body: once(buf) };
          continue;
        }
        if (!(opts.legacy && archive === 0 && (DELTA_RE.test(name) || name.startsWith(META_PREFIX) || name === 'meta')))
          throw new SbkError(
            `${source}: not an sbk archive (the first entry is '${name}', not ${MANIFEST_ENTRY})`,
            archive === 0 ? ExitCode.badInput : ExitCode.corrupt,
          );
        current = new ArchiveState(legacyManifest(), true, source);
      }

      const { manifest } = current;
      const { role, volume, part } = current.roleOf(header);
      if (role === 'trailer') {
        const buf = await collect(entry as AsyncIterable<Buffer>, MAX_JSON_ENTRY, TRAILER_ENTRY, source);
        const trailer = current.verify(buf);
        yield { archive, role, name, header, manifest, trailer, body: once(buf) };
        current = undefined;
        continue;
      }

      const vstate = current.volumeHash(volume, part);
      const body = hashedBody(entry as AsyncIterable<Buffer>, vstate, asSbkError);
      yield { archive, role, name, header, manifest, volume, part, body: body.tracked };
      // The consumer may have stopped early, or not read at all: finish the entry so hashes cover all of it.
      const digest = await body.drain();
      vstate?.part(digest.size, digest.sha256);
      if (header.type === 'file') current.digests.push({ name, ...digest });
    }
  } catch (err) {
    throw asSbkError(err);
  }
  if (current && !current.legacy) {
    throw corrupt(source, `archive ${current.manifest.name} is incomplete: the stream ends after '${lastName}' without a trailer (truncated?)`);
  }
  if (archive < 0) throw new SbkError(`${source}: empty input (no archive)`, ExitCode.badInput);
}
