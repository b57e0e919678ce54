// Writing an sbk archive into a tar-stream pack: the manifest, meta/ files, the changelog, each
// volume's send stream framed as delta parts, and the trailer that marks the archive complete.
import { createHash, type Hash } from 'node:crypto';
import type tar from 'tar-stream';
import { SbkError, ExitCode } from '../../core/errors.js';
import { ARCHIVE_FORMAT, VolumeDigest, CHANGELOG_ENTRY, DEFAULT_PART_SIZE, MANIFEST_ENTRY, META_PREFIX, TRAILER_ENTRY, deltaPartName, type EntryDigest, type Manifest, type Trailer } from './manifest.js';
import { writeTarEntry } from './tar-entry.js';

/** How much of the next part sbk-send reads while a part is being written (see addDelta). */
const READ_AHEAD = 4 * 1024 * 1024;

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
    await writeTarEntry(this.pack, { type: 'file', mode: 0o644, mtime: this.mtime, ...header, size }, chunks);
    const d = { name: header.name, size, sha256: hash.digest('hex') };
    this.digests.push(d);
    return d;
  }

  async start(): Promise<void> {
    await this.put({ name: MANIFEST_ENTRY }, [Buffer.from(JSON.stringify(this.manifest, null, 2) + '\n')]);
  }

  async addMetaDirectory(rel: string, mode: number, mtime: Date): Promise<void> {
    await writeTarEntry(this.pack, { name: META_PREFIX + rel + '/', type: 'directory', mode, mtime });
  }

  async addMetaFile(rel: string, data: Buffer, mode: number, mtime: Date): Promise<void> {
    await this.put({ name: META_PREFIX + rel, mode, mtime }, [data]);
  }

  /** Streams a file of known size (the changelog can be large: never held whole in memory). */
  async addChangelog(body: AsyncIterable<Buffer>, size: number): Promise<void> {
    const hash = createHash('sha256');
    let n = 0;
    // Hashed and measured on the way: the size went into the tar header before the first byte.
    const counted = async function* () {
      for await (const c of body) {
        hash.update(c);
        n += c.length;
        if (n > size) throw new SbkError(`${CHANGELOG_ENTRY} grew while being archived`, ExitCode.failure);
        yield c;
      }
      if (n < size) throw new SbkError(`${CHANGELOG_ENTRY} shrank while being archived`, ExitCode.failure);
    };
    await writeTarEntry(this.pack, { name: CHANGELOG_ENTRY, type: 'file', mode: 0o644, mtime: this.mtime, size }, counted());
    this.digests.push({ name: CHANGELOG_ENTRY, size: n, sha256: hash.digest('hex') });
  }

  /**
   * Frames a send stream of unknown length as parts of at most `partSize` bytes. A part's tar
   * header needs its size, so a part is collected before it is written; while it is written, up
   * to READ_AHEAD bytes of the next one are collected, so that the send and the reader of the tar
   * stream keep flowing instead of waiting for each other part by part (memory: one part plus
   * READ_AHEAD). A part's digest is taken as the bytes arrive, while they are still in the cache;
   * the whole delta's is of the parts' digests (VolumeDigest).
   */
  async addDelta(volume: string, stream: AsyncIterable<Buffer>, onBytes?: (n: number) => void): Promise<void> {
    const whole = new VolumeDigest(ARCHIVE_FORMAT);
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
      // Parts are put one after the other, so their digests reach `whole` in stream order.
      writing = this.put({ name }, chunks, digest)
        .then((d) => whole.part(d.size, d.sha256))
        .finally(() => {
          written = true;
        });
      writing.catch(() => {}); // awaited at the next part or at the end
    };
    try {
      for await (const chunk0 of stream) {
        let chunk = chunk0;
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
    this.volumes[volume] = { size: whole.size, sha256: whole.digest(), parts: whole.parts };
  }

  async finish(): Promise<Trailer> {
    const trailer: Trailer = {
      sbk: 'trailer',
      format: ARCHIVE_FORMAT,
      name: this.manifest.name,
      entries: this.digests,
      volumes: this.volumes,
    };
    const buf = Buffer.from(JSON.stringify(trailer, null, 2) + '\n');
    await writeTarEntry(this.pack, { name: TRAILER_ENTRY, mode: 0o644, mtime: this.mtime, size: buf.length }, [buf]);
    return trailer;
  }
}
