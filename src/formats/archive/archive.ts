// The sbk archive format (man/sbk.7, ARCHIVE FORMAT): one tar per backup, entries in this order
//   manifest.json                 the backup record plus the tool's version
//   meta/…                        the container's own files (config, fstab, …)
//   changelog.txt                 optional: the changes since the previous backup
//   <volume>.delta                a volume's btrfs send stream, or when larger than one part
//   <volume>.delta.000000 …       parts whose lexical order is stream order
//   trailer.json                  size and sha256 of every entry and of every whole delta
// The trailer comes last and marks the archive complete: a tar cut at an entry boundary ends
// without error, so without it a truncated archive would look whole.
import { createHash, type Hash } from 'node:crypto';
import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import { SbkError, ExitCode } from '../../core/errors.js';
import { backupName, isValidContainerName, isValidVolumeName } from '../../core/layout.js';
import type { BackupRecord, SetRef } from '../record.js';
import { isSafeMetaPath, metaEntryCost, metaEntryRefusal } from './meta.js';

export const ARCHIVE_FORMAT = 1;
export const MANIFEST_ENTRY = 'manifest.json';
export const TRAILER_ENTRY = 'trailer.json';
export const CHANGELOG_ENTRY = 'changelog.txt';
export const META_PREFIX = 'meta/';
/** Default size of a delta part: the memory a stage needs to frame a stream of unknown length. */
export const DEFAULT_PART_SIZE = 8 * 1024 * 1024;
const PART_DIGITS = 6;
/** How much of the next part sbk-send reads while a part is being written (see addDelta). */
const READ_AHEAD = 4 * 1024 * 1024;
const MAX_JSON_ENTRY = 16 * 1024 * 1024;

export interface ManifestVolume {
  name: string;
  mount: string;
  uuid: string;
  parentUuid: string | null;
  /**
   * The snapshot's root directory: an incremental's `btrfs receive` makes a new root, and the
   * stream carries no chmod/chown/utimes for a root that did not change. Absent in older archives.
   */
  root?: VolumeRoot;
}

/** A volume root's mode (permission bits), owner and times (`<seconds>.<9 digits>`, to the ns). */
export interface VolumeRoot {
  mode: number;
  uid: number;
  gid: number;
  atime: string;
  mtime: string;
}

const ROOT_TIME = /^-?\d{1,12}\.\d{9}$/;

/** `<seconds>.<nanoseconds, 9 digits>` of a bigint ns time, as VolumeRoot holds it. */
export function formatRootTime(ns: bigint): string {
  const sec = ns / 1_000_000_000n - (ns < 0n && ns % 1_000_000_000n !== 0n ? 1n : 0n);
  const frac = ns - sec * 1_000_000_000n;
  return `${sec}.${String(frac).padStart(9, '0')}`;
}

export interface Manifest {
  sbk: 'manifest';
  format: number;
  tool: string;
  created: string;
  container: string;
  time: number;
  full: boolean;
  name: string;
  parent: Omit<SetRef, 'set'> | null;
  previous: Omit<SetRef, 'set'> | null;
  volumes: ManifestVolume[];
  /** Where the snapshots were on the machine that made the backup (informational). */
  source: { containerDir: string; set: string; host: string };
  meta: string[];
  changelog: boolean;
  /**
   * Subvolumes nested in a volume, not in its send stream (btrfs send does not cross them); a
   * restore makes an empty directory at each. Absent in archives of older versions.
   */
  nestedSubvolumes?: ManifestNested[];
}

export interface ManifestNested {
  volume: string;
  /** Relative to the volume's root. */
  path: string;
  mode: number;
  uid: number;
  gid: number;
}

export interface EntryDigest {
  name: string;
  size: number;
  sha256: string;
}

export interface Trailer {
  sbk: 'trailer';
  format: number;
  name: string;
  entries: EntryDigest[];
  volumes: Record<string, { size: number; sha256: string; parts: number }>;
}

export function manifestFromRecord(
  r: BackupRecord,
  extra: { tool: string; host: string; meta: string[]; changelog: boolean; nestedSubvolumes?: ManifestNested[]; now?: Date; roots?: Record<string, VolumeRoot> },
): Manifest {
  const ref = (s: SetRef | null) => (s ? { time: s.time, full: s.full, name: s.name } : null);
  return {
    sbk: 'manifest',
    format: ARCHIVE_FORMAT,
    tool: extra.tool,
    created: (extra.now ?? new Date()).toISOString(),
    container: r.container,
    time: r.time,
    full: r.full,
    name: r.name,
    parent: ref(r.parent),
    previous: ref(r.previous),
    volumes: r.volumes.map((v) => {
      const root = extra.roots && Object.hasOwn(extra.roots, v.name) ? extra.roots[v.name] : undefined;
      return { name: v.name, mount: v.mount, uuid: v.uuid, parentUuid: v.parentUuid, ...(root ? { root } : {}) };
    }),
    source: { containerDir: r.containerDir, set: r.set, host: extra.host },
    meta: extra.meta,
    changelog: extra.changelog,
    nestedSubvolumes: extra.nestedSubvolumes ?? [],
  };
}

export const deltaPartName = (volume: string, part: number) => `${volume}.delta.${String(part).padStart(PART_DIGITS, '0')}`;

// ---------------------------------------------------------------------------------------------
// Writing

interface EntryHeader {
  name: string;
  type?: 'file' | 'directory';
  mode?: number;
  mtime?: Date;
  size?: number;
}

/** Writes one archive into a tar-stream pack; the caller finalizes the pack afterwards. */
export class ArchiveWriter {
  private readonly digests: EntryDigest[] = [];
  // No prototype: a volume may be named `__proto__` (a valid name), which `{}` would swallow.
  private readonly volumes: Trailer['volumes'] = Object.create(null) as Trailer['volumes'];
  private readonly mtime: Date;

  constructor(
    private readonly pack: tar.Pack,
    private readonly manifest: Manifest,
    private readonly partSize = DEFAULT_PART_SIZE,
  ) {
    this.mtime = new Date(manifest.time * 1000);
  }

  /**
   * Writes an entry whose body is known (small, or one delta part): returns when the pack has
   * taken it. `digest` is the body's sha256 when the caller has it already.
   */
  private async put(header: EntryHeader, chunks: Buffer[], digest?: Hash): Promise<EntryDigest> {
    const hash = digest ?? createHash('sha256');
    let size = 0;
    for (const c of chunks) {
      if (!digest) hash.update(c);
      size += c.length;
    }
    const full = { type: 'file' as const, mode: 0o644, mtime: this.mtime, ...header, size };
    await new Promise<void>((resolve, reject) => {
      const sink = this.pack.entry(full, (err) => (err ? reject(err) : resolve()));
      // A failing entry reports through the callback; its 'error' event must not go unheard.
      sink.on('error', () => {});
      // Writes wait for the pack's reader (tar-stream backpressure), so memory stays at one part.
      for (const c of chunks) sink.write(c);
      (sink as unknown as { end(): void }).end();
    });
    const d = { name: header.name, size, sha256: hash.digest('hex') };
    this.digests.push(d);
    return d;
  }

  async start(): Promise<void> {
    await this.put({ name: MANIFEST_ENTRY }, [Buffer.from(JSON.stringify(this.manifest, null, 2) + '\n')]);
  }

  async addMetaDirectory(rel: string, mode: number, mtime: Date): Promise<void> {
    await new Promise<void>((resolve, reject) => {
      this.pack.entry({ name: META_PREFIX + rel + '/', type: 'directory', mode, mtime }, (err) =>
        err ? reject(err) : resolve(),
      );
    });
  }

  async addMetaFile(rel: string, data: Buffer, mode: number, mtime: Date): Promise<void> {
    await this.put({ name: META_PREFIX + rel, mode, mtime }, [data]);
  }

  /** Streams a file of known size (the changelog can be large: never held whole in memory). */
  async addChangelog(body: AsyncIterable<Buffer>, size: number): Promise<void> {
    const hash = createHash('sha256');
    let n = 0;
    await new Promise<void>((resolve, reject) => {
      const sink = this.pack.entry({ name: CHANGELOG_ENTRY, type: 'file', mode: 0o644, mtime: this.mtime, size }, (err) =>
        err ? reject(err) : resolve(),
      );
      // A failing entry reports through the callback; its 'error' event must not go unheard.
      sink.on('error', () => {});
      (async () => {
        for await (const c of body) {
          hash.update(c);
          n += c.length;
          if (n > size) throw new SbkError(`${CHANGELOG_ENTRY} grew while being archived`, ExitCode.failure);
          if (!sink.write(c)) await new Promise<void>((r) => sink.once('drain', () => r()));
        }
        if (n < size) throw new SbkError(`${CHANGELOG_ENTRY} shrank while being archived`, ExitCode.failure);
        (sink as unknown as { end(): void }).end();
      })().catch((err: Error) => {
        sink.destroy(err);
        reject(err);
      });
    });
    this.digests.push({ name: CHANGELOG_ENTRY, size: n, sha256: hash.digest('hex') });
  }

  /**
   * Frames a send stream of unknown length as parts of at most `partSize` bytes. A part's tar
   * header needs its size, so a part is collected before it is written; while it is written, up
   * to READ_AHEAD bytes of the next one are collected, so that the send and the reader of the tar
   * stream keep flowing instead of waiting for each other part by part (memory: one part plus
   * READ_AHEAD). Both digests are taken as the bytes arrive, while they are still in the cache.
   */
  async addDelta(volume: string, stream: AsyncIterable<Buffer>, onBytes?: (n: number) => void): Promise<void> {
    const whole = createHash('sha256');
    let total = 0;
    let part = 0;
    let pending: Buffer[] = [];
    let pendingSize = 0;
    let partHash = createHash('sha256');
    let writing: Promise<unknown> = Promise.resolve();
    let written = true; // no part is being written
    const flush = async (last: boolean) => {
      // A stream that fits one part is stored as `<volume>.delta`, as the original tool named it.
      const name = last && part === 0 ? `${volume}.delta` : deltaPartName(volume, part);
      const chunks = pending;
      const digest = partHash;
      part++;
      pending = [];
      pendingSize = 0;
      partHash = createHash('sha256');
      await writing; // entries one after the other; a failed write stops the framing here
      written = false;
      writing = this.put({ name }, chunks, digest).finally(() => {
        written = true;
      });
      writing.catch(() => {}); // awaited at the next part or at the end
    };
    try {
      for await (const chunk0 of stream) {
        let chunk = chunk0;
        whole.update(chunk);
        total += chunk.length;
        onBytes?.(chunk.length);
        while (pendingSize + chunk.length >= this.partSize) {
          const take = this.partSize - pendingSize;
          const head = chunk.subarray(0, take);
          partHash.update(head);
          pending.push(head);
          pendingSize += take;
          chunk = chunk.subarray(take);
          // The part is full but the stream may end right here: only the next byte tells, so a
          // stream of exactly N parts still gets numbered names.
          await flush(false);
        }
        if (chunk.length) {
          partHash.update(chunk);
          pending.push(chunk);
          pendingSize += chunk.length;
        }
        if (!written && pendingSize >= READ_AHEAD) await writing;
      }
      if (pendingSize > 0 || part === 0) await flush(true);
    } catch (err) {
      await writing.catch(() => {}); // never leave a part being written behind
      throw err;
    }
    await writing;
    this.volumes[volume] = { size: total, sha256: whole.digest('hex'), parts: part };
  }

  async finish(): Promise<Trailer> {
    const trailer: Trailer = {
      sbk: 'trailer',
      format: ARCHIVE_FORMAT,
      name: this.manifest.name,
      entries: this.digests,
      volumes: this.volumes,
    };
    await new Promise<void>((resolve, reject) => {
      this.pack.entry(
        { name: TRAILER_ENTRY, mode: 0o644, mtime: this.mtime },
        Buffer.from(JSON.stringify(trailer, null, 2) + '\n'),
        (err) => (err ? reject(err) : resolve()),
      );
    });
    return trailer;
  }
}

// ---------------------------------------------------------------------------------------------
// Reading

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
  /** For the last entry of a legacy archive (no trailer): true. */
  legacy?: boolean;
}

export interface ReadOptions {
  /** Accept archives of the original Subutai tool (no manifest, no trailer). */
  legacy?: boolean;
  /** Name of the input for messages (a file name, or 'stdin'). */
  source?: string;
}

const corrupt = (source: string, msg: string) => new SbkError(`${source}: ${msg}`, ExitCode.corrupt);

/** Messages stay on one line: control characters (newlines of quoted input) become spaces. */
const oneLine = (m: string) => m.replace(/[\x00-\x1f\x7f]+/g, ' ');

function parseJson(buf: Buffer, what: string, source: string): Record<string, unknown> {
  try {
    const v = JSON.parse(buf.toString('utf8')) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (err) {
    throw corrupt(source, `${what} is not valid JSON (${oneLine((err as Error).message)})`);
  }
}

export function checkManifest(v: Record<string, unknown>, source: string): Manifest {
  const bad = (m: string) => corrupt(source, `manifest.json: ${m}`);
  if (v.sbk !== 'manifest') throw bad('not an sbk manifest');
  if (v.format !== ARCHIVE_FORMAT) throw new SbkError(`${source}: archive format ${String(v.format)} is not supported (this sbk reads ${ARCHIVE_FORMAT})`, ExitCode.badInput);
  if (typeof v.container !== 'string' || !isValidContainerName(v.container)) throw bad('invalid container name');
  if (!Number.isSafeInteger(v.time) || (v.time as number) < 0) throw bad('invalid time');
  if (typeof v.full !== 'boolean') throw bad('invalid full flag');
  if (typeof v.name !== 'string') throw bad('missing name');
  // The archive's file name and the chain are made from container, time and kind: the name must agree.
  if (v.name !== backupName(v.container, v.time as number, v.full))
    throw bad(`name ${JSON.stringify(v.name)} is not ${backupName(v.container, v.time as number, v.full)}`);
  if (!v.full && (typeof v.parent !== 'object' || v.parent === null)) throw bad('an incremental without a parent');
  if (!Array.isArray(v.volumes) || v.volumes.length === 0) throw bad('no volumes');
  const seen = new Set<string>();
  for (const vol of v.volumes as Record<string, unknown>[]) {
    if (typeof vol?.name !== 'string' || !isValidVolumeName(vol.name)) throw bad(`invalid volume name ${JSON.stringify(vol?.name)}`);
    if (seen.has(vol.name)) throw bad(`volume ${vol.name} listed twice`);
    seen.add(vol.name);
    if (typeof vol.mount !== 'string' || !vol.mount.startsWith('/')) throw bad(`invalid mount point of ${vol.name}`);
    if (vol.root !== undefined) {
      const r = vol.root as Record<string, unknown> | null;
      const id = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0 && (x as number) <= 0xffffffff;
      if (
        typeof r !== 'object' || r === null ||
        !Number.isInteger(r.mode) || (r.mode as number) < 0 || (r.mode as number) > 0o7777 ||
        !id(r.uid) || !id(r.gid) ||
        typeof r.atime !== 'string' || !ROOT_TIME.test(r.atime) || typeof r.mtime !== 'string' || !ROOT_TIME.test(r.mtime)
      )
        throw bad(`invalid root of ${vol.name}`);
    }
  }
  if (v.nestedSubvolumes !== undefined) {
    if (!Array.isArray(v.nestedSubvolumes)) throw bad('nestedSubvolumes is not a list');
    const id = (n: unknown) => Number.isSafeInteger(n) && (n as number) >= 0 && (n as number) <= 0xffffffff;
    for (const n of v.nestedSubvolumes as Record<string, unknown>[]) {
      if (typeof n?.volume !== 'string' || !seen.has(n.volume)) throw bad(`a nested subvolume of an unlisted volume ${JSON.stringify(n?.volume)}`);
      if (typeof n.path !== 'string' || !isSafeMetaPath(n.path)) throw bad(`unsafe nested subvolume path ${JSON.stringify(n.path)}`);
      if (!Number.isSafeInteger(n.mode) || (n.mode as number) < 0 || (n.mode as number) > 0o7777 || !id(n.uid) || !id(n.gid))
        throw bad(`invalid mode or owner of nested subvolume ${n.path}`);
    }
  }
  return v as unknown as Manifest;
}

export { isSafeMetaPath };

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

function legacyManifest(): Manifest {
  return {
    sbk: 'manifest',
    format: 0,
    tool: 'subutai (legacy)',
    created: '',
    container: '',
    time: 0,
    full: true,
    name: '',
    parent: null,
    previous: null,
    volumes: [],
    source: { containerDir: '', set: '', host: '' },
    meta: [],
    changelog: false,
  };
}

const DELTA_RE = /^([^/]+)\.delta(?:\.(\d{6}))?$/;

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
  let manifest: Manifest | undefined;
  let legacy = false;
  let digests: EntryDigest[] = [];
  let volumeHashes = new Map<string, { hash: ReturnType<typeof createHash>; size: number; parts: number; single: boolean }>();
  let volumeIndex = -1;
  let sawChangelog = false;
  let metaBytes = 0; // of the current archive's meta entries (see meta.ts)
  // Names seen in the current archive: a duplicate could make a restore take the wrong copy.
  let seenNames = new Set<string>();
  let lastName = '';

  /** Turns the errors of a broken tar or gzip stream into SbkErrors; others (I/O) pass unchanged. */
  const asSbkError = (err0: unknown): unknown => {
    if (err0 instanceof SbkError) return err0;
    const err = /destroyed|premature/i.test((err0 as Error)?.message ?? '') && extractError ? extractError : err0;
    if (err instanceof SbkError) return err;
    const msg = oneLine((err as Error)?.message ?? String(err));
    if (archive < 0 && /invalid (tar )?header|unknown format|unexpected end of data/i.test(msg))
      return new SbkError(`${source}: not a tar stream (${msg})`, ExitCode.badInput);
    if (/unexpected end of data|premature|invalid (tar )?header|unknown format|header exceeds|checksum|stream was destroyed/i.test(msg))
      return corrupt(source, `the tar stream is broken after entry '${lastName}' (${msg})`);
    if ((err as { code?: string } | undefined)?.code?.startsWith('Z_') || /incorrect header check|invalid (block|stored|distance)|unexpected end of file/i.test(msg))
      return corrupt(source, `the gzip data is corrupt (${msg})`);
    return err;
  };

  try {
    for await (const entry of extract) {
      const header = entry.header;
      const name = header.name;
      lastName = name;
      let role: EntryRole;
      let volume: string | undefined;
      let part: number | undefined;

      if (manifest === undefined) {
        // The first entry of an archive.
        archive++;
        digests = [];
        volumeHashes = new Map();
        volumeIndex = -1;
        sawChangelog = false;
        metaBytes = 0;
        seenNames = new Set([MANIFEST_ENTRY]);
        if (name === MANIFEST_ENTRY && header.type === 'file') {
          const hash = createHash('sha256');
          const buf = await collect(entry as AsyncIterable<Buffer>, MAX_JSON_ENTRY, MANIFEST_ENTRY, source);
          hash.update(buf);
          manifest = checkManifest(parseJson(buf, MANIFEST_ENTRY, source), source);
          digests.push({ name, size: buf.length, sha256: hash.digest('hex') });
          legacy = false;
          yield { archive, role: 'manifest', name, header, manifest, body: (async function* () { yield buf; })() };
          continue;
        }
        if (opts.legacy && archive === 0 && (DELTA_RE.test(name) || name.startsWith(META_PREFIX) || name === 'meta')) {
          legacy = true;
          manifest = legacyManifest();
        } else {
          throw new SbkError(
            `${source}: not an sbk archive (the first entry is '${name}', not ${MANIFEST_ENTRY})`,
            archive === 0 ? ExitCode.badInput : ExitCode.corrupt,
          );
        }
      }

      // Entries after the manifest.
      if (header.type !== 'file' && !(header.type === 'directory' && (name.startsWith(META_PREFIX) || name === 'meta' || name === 'meta/'))) {
        throw corrupt(source, `entry '${name}' is a ${header.type}; sbk archives hold only files and meta/ directories`);
      }
      // tar-stream never ends the body of a directory that declares data: reading it would hang.
      if (header.type === 'directory' && (header.size ?? 0) > 0)
        throw corrupt(source, `directory entry '${name}' declares ${String(header.size)} bytes of data`);
      const delta = DELTA_RE.exec(name);
      if (name === TRAILER_ENTRY && !legacy) {
        role = 'trailer';
      } else if (name === 'meta/' || name === 'meta' || name.startsWith(META_PREFIX)) {
        const rel = name.replace(/^meta\/?/, '').replace(/\/$/, '');
        if (rel !== '' && !isSafeMetaPath(rel)) throw corrupt(source, `unsafe entry name '${name}'`);
        if (rel === '' && header.type !== 'directory') throw corrupt(source, `entry '${name}' is a ${header.type}, not the meta/ directory`);
        if (volumeIndex >= 0 && !legacy) throw corrupt(source, `meta entry '${name}' after the deltas`);
        if (sawChangelog) throw corrupt(source, `meta entry '${name}' after the changelog`);
        const size = header.type === 'file' ? (header.size ?? 0) : 0;
        const refusal = metaEntryRefusal(size, metaBytes, legacy);
        if (refusal) throw corrupt(source, `meta entry '${name}' ${refusal}`);
        metaBytes += metaEntryCost(size);
        role = 'meta';
      } else if (name === CHANGELOG_ENTRY && !legacy) {
        if (sawChangelog || volumeIndex >= 0) throw corrupt(source, `unexpected ${CHANGELOG_ENTRY} here`);
        sawChangelog = true;
        role = 'changelog';
      } else if (delta) {
        volume = delta[1]!;
        part = delta[2] === undefined ? undefined : Number(delta[2]);
        if (!isValidVolumeName(volume)) throw corrupt(source, `unsafe volume name in '${name}'`);
        if (legacy) {
          if (part !== undefined && part > 0 && !volumeHashes.has(volume)) throw corrupt(source, `'${name}' without its earlier parts`);
        } else {
          const idx = manifest.volumes.findIndex((v) => v.name === volume);
          if (idx < 0) throw corrupt(source, `entry '${name}' names a volume the manifest does not list`);
          const state = volumeHashes.get(volume);
          if (idx !== volumeIndex) {
            if (idx < volumeIndex || state) throw corrupt(source, `entry '${name}' is out of order`);
            if (part !== undefined && part !== 0) throw corrupt(source, `entry '${name}': part 000000 is missing`);
            volumeIndex = idx;
          } else {
            if (!state || state.single || part === undefined || part !== state.parts)
              throw corrupt(source, `entry '${name}' is out of order (expected part ${state ? deltaPartName(volume, state.parts) : '000000'})`);
          }
        }
        role = 'delta';
      } else {
        throw corrupt(source, `unexpected entry '${name}'`);
      }

      const key = name.replace(/\/$/, '');
      if (seenNames.has(key)) throw corrupt(source, `entry '${name}' appears twice`);
      seenNames.add(key);

      if (role === 'trailer') {
        const buf = await collect(entry as AsyncIterable<Buffer>, MAX_JSON_ENTRY, TRAILER_ENTRY, source);
        const trailer = verifyTrailer(parseJson(buf, TRAILER_ENTRY, source), manifest, digests, volumeHashes, sawChangelog, source);
        yield { archive, role, name, header, manifest, trailer, body: (async function* () { yield buf; })() };
        manifest = undefined;
        continue;
      }

      let vstate = volume ? volumeHashes.get(volume) : undefined;
      if (volume && !vstate) {
        vstate = { hash: createHash('sha256'), size: 0, parts: 0, single: part === undefined };
        volumeHashes.set(volume, vstate);
      }
      const hash = createHash('sha256');
      let size = 0;
      const body = (async function* () {
        try {
          for await (const c of entry as AsyncIterable<Buffer>) {
            hash.update(c);
            vstate?.hash.update(c);
            size += c.length;
            yield c;
          }
        } catch (err) {
          // Read by the consumer, outside the catch below: its errors must be SbkErrors too.
          throw asSbkError(err);
        }
      })();
      let started = false;
      const tracked: AsyncIterable<Buffer> = {
        [Symbol.asyncIterator]() {
          started = true;
          const it = body[Symbol.asyncIterator]();
          // A consumer that stops early (break) must not close the entry: that would destroy the
          // whole tar stream. The rest is drained and hashed below.
          return {
            next: () => it.next(),
            return: async () => ({ done: true as const, value: undefined }),
            [Symbol.asyncIterator]() {
              return this;
            },
          };
        },
      };
      yield { archive, role, name, header, manifest, volume, part, body: tracked };
      if (!started) for await (const _ of body) void _;
      else {
        // The consumer may have stopped early; finish the entry so hashes cover all of it.
        for await (const _ of body) void _;
      }
      if (vstate) {
        vstate.size += size;
        vstate.parts++;
      }
      if (header.type === 'file') digests.push({ name, size, sha256: hash.digest('hex') });
    }
  } catch (err) {
    throw asSbkError(err);
  }
  if (manifest && !legacy) {
    throw corrupt(source, `archive ${manifest.name} is incomplete: the stream ends after '${lastName}' without a trailer (truncated?)`);
  }
  if (archive < 0) throw new SbkError(`${source}: empty input (no archive)`, ExitCode.badInput);
}

function verifyTrailer(
  v: Record<string, unknown>,
  manifest: Manifest,
  seen: EntryDigest[],
  volumes: Map<string, { hash: ReturnType<typeof createHash>; size: number; parts: number }>,
  sawChangelog: boolean,
  source: string,
): Trailer {
  const bad = (m: string) => corrupt(source, `${manifest.name}: ${m}`);
  if (v.sbk !== 'trailer' || !Array.isArray(v.entries) || typeof v.volumes !== 'object' || v.volumes === null)
    throw bad('trailer.json is not an sbk trailer');
  const t = v as unknown as Trailer;
  if (t.name !== manifest.name) throw bad(`the trailer belongs to ${String(t.name)}`);
  for (let i = 0; i < Math.max(t.entries.length, seen.length); i++) {
    const want = t.entries[i];
    const got = seen[i];
    if (!want) throw bad(`entry '${got!.name}' is not in the trailer`);
    if (!got) throw bad(`entry '${want.name}' is missing`);
    if (want.name !== got.name) throw bad(`entry '${got.name}' found where the trailer lists '${want.name}'`);
    if (want.size !== got.size) throw bad(`entry '${got.name}' has ${got.size} bytes, the trailer says ${want.size}`);
    if (want.sha256 !== got.sha256) throw bad(`entry '${got.name}' fails its sha256 check`);
  }
  if (manifest.changelog !== sawChangelog) throw bad(`changelog.txt ${sawChangelog ? 'is not announced' : 'is missing'}`);
  for (const vol of manifest.volumes) {
    const got = volumes.get(vol.name);
    const want = Object.hasOwn(t.volumes, vol.name) ? t.volumes[vol.name] : undefined;
    if (!got) throw bad(`the delta of volume ${vol.name} is missing`);
    if (!want) throw bad(`volume ${vol.name} is not in the trailer`);
    const digest = got.hash.digest('hex');
    if (want.size !== got.size || want.sha256 !== digest || want.parts !== got.parts)
      throw bad(`the delta of volume ${vol.name} fails its check`);
  }
  return t;
}
