// sbk-pack's work: reads a stream of sbk archives (uncompressed tar, as sbk-send writes it),
// checks each against its trailer while compressing it, and stores it atomically: the archive
// appears under its final name only when complete and verified. Then the changelog sidecar is
// placed and the snapshot set is confirmed (it may now be a parent).
// `--store DIR` (storeArchives) is the receiving end of a remote backup: it also takes the gzip
// stream of `sbk-pack -o -` and keeps the sender's bytes, verifying them on the way in.
import { createHash, type Hash } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { link, open, readdir, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { Transform, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { readArchives, type Manifest } from '../../formats/archive/archive.js';
import { createAtomicFile, fsyncDir, removeStaleTemps, tempNameFor, writeChunk, WriteBehind, WRITE_BEHIND_BYTES, type AtomicFile } from '../../system/atomic.js';
import { crc32 } from '../../formats/codecs/gzip.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import { peekStream, sniff, describeKind } from '../../formats/input.js';
import { archiveFileName, changelogFileName, setDirName, type Dirs } from '../../core/layout.js';
import { confirmBackupSet, discardFailedSet } from '../../system/sets.js';
import { backupLockFile, withLock } from '../../system/lock.js';
import type { Log } from '../../core/log.js';
import { RECEIPT_FORMAT, type Receipt } from '../../formats/receipt.js';

export type PackTarget =
  | { kind: 'store'; dirs: Dirs } // <backup-dir>/<name>.tar.gz + sidecar + confirmation
  | { kind: 'dir'; dir: string } // --store DIR: <DIR>/<name>.tar.gz + sidecar, no confirmation
  | { kind: 'file'; path: string } // -o FILE: exactly one archive
  | { kind: 'stdout' }; // -o -: gzip members one after another

export interface StoredArchive {
  name: string;
  path: string;
  size: number;
  sha256: string;
  manifest?: Manifest;
}

export interface PackOptions {
  target: PackTarget;
  level: number;
  threads?: number;
  log: Log;
  signal?: AbortSignal;
  /** Makes the compressor (a Duplex: bytes in, gzip out) for the archive of `manifest`. */
  compressor: (level: number, threads?: number, manifest?: Manifest) => NodeJS.ReadWriteStream;
  /** Called once per archive when it is safely stored. */
  onStored?: (a: StoredArchive) => Promise<void> | void;
  /** Snapshot sets could not be pruned after a confirmation (the archive is stored). */
  onPruneError?: (e: SbkError) => void;
}

/** Counts and hashes what passes, to report the stored archive's size and sha256. */
function digestStream(): Transform & { size: number; sha256: () => string } {
  const hash = createHash('sha256');
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      hash.update(chunk);
      (t as unknown as { size: number }).size += chunk.length;
      cb(null, chunk);
    },
  }) as Transform & { size: number; sha256: () => string };
  t.size = 0;
  t.sha256 = () => hash.digest('hex');
  return t;
}

async function checkInput(source: Readable): Promise<Readable> {
  const { head, stream } = await peekStream(source, 512);
  const kind = sniff(head);
  if (kind === 'tar') return stream;
  if (kind === 'empty') throw new SbkError('no input (did the stage before fail?): expected the tar stream of sbk-send on stdin', ExitCode.badInput);
  const hint =
    kind === 'ndjson'
      ? ' (pipe the records through sbk-send first)'
      : kind === 'gzip'
        ? ' (already compressed: this looks like sbk-pack output; sbk-pack --store DIR takes it)'
        : '';
  throw new SbkError(`expected the tar stream of sbk-send on stdin, got ${describeKind[kind]}${hint}`, ExitCode.badInput);
}

interface Open {
  manifest: Manifest;
  pack: tar.Pack;
  piping: Promise<void>;
  digest: ReturnType<typeof digestStream>;
  file?: AtomicFile;
  finalPath: string;
  changelog?: AtomicFile;
  changelogPiping?: Promise<void>;
}

/**
 * Marks the backup's snapshot set (if it is on this host) as a valid parent; then prunes older
 * sets when the run that made the set asked for it (sbk-snap --keep-snapshots).
 */
async function confirm(dirs: Dirs, m: Manifest, result: StoredArchive, log: Log, onPruneError?: (e: SbkError) => void): Promise<void> {
  const set = path.join(dirs.backupDir, m.container, setDirName(m.time, m.full));
  if (!(await stat(set).then((s) => s.isDirectory(), () => false))) {
    log.warn(`${m.name}: no snapshot set ${set} here to confirm; stored the archive only`);
    return;
  }
  const { pruneError } = await confirmBackupSet(
    dirs,
    m.container,
    set,
    {
      sbk: 'confirmation',
      by: 'sbk-pack',
      name: m.name,
      archive: path.basename(result.path),
      size: result.size,
      sha256: result.sha256,
      stored: new Date().toISOString(),
    },
    { log },
  );
  if (pruneError) {
    log.error(pruneError.message);
    onPruneError?.(pruneError);
  }
}

const storeDir = (t: { kind: 'store'; dirs: Dirs } | { kind: 'dir'; dir: string }) => (t.kind === 'store' ? t.dirs.backupDir : t.dir);

/**
 * When the output fails (disk full, the reader gone) the pack is destroyed and the next entry
 * fails with a bare "already finalized or destroyed": report the output's own error instead.
 */
async function writeOrExplain(o: { piping: Promise<void> }, write: () => Promise<void>): Promise<void> {
  try {
    await write();
  } catch (err) {
    await o.piping;
    throw err;
  }
}

/**
 * Stops reading the input for good, so that the writer upstream gets EPIPE now rather than when
 * this process exits. libuv never closes fds 0-2, so stdin's fd is closed here.
 */
async function stopReading(source: Readable, input: Readable): Promise<void> {
  input.destroy();
  source.destroy();
  if (source !== process.stdin) return;
  if (!source.closed) await new Promise((resolve) => source.once('close', resolve));
  try {
    closeSync(0);
  } catch {
    // already closed
  }
  // Keep fd 0 taken (by /dev/null), so that no file opened later gets it and is taken for stdin.
  try {
    const fd = openSync('/dev/null', 'r');
    if (fd !== 0) closeSync(fd);
  } catch {
    // nothing to keep it with: not worth failing the clean-up for
  }
}

export async function packArchives(source: Readable, opts: PackOptions): Promise<StoredArchive[]> {
  const input = await checkInput(source);
  const { target, log } = opts;
  if (target.kind === 'store' || target.kind === 'dir') {
    // Temporary files of killed runs; the directory may be shared by hosts whose pids mean
    // nothing here, so only files an hour old go.
    for (const n of await removeStaleTemps(storeDir(target), { minAgeMs: 3600_000 }))
      log.info(`removed ${n}, left by a run that did not finish`);
  }
  const stored: StoredArchive[] = [];
  let current: Open | undefined;

  const abort = async (o: Open | undefined, err: unknown) => {
    if (!o) return;
    o.pack.destroy(err as Error);
    await o.piping.catch(() => {});
    await o.file?.abort();
    await o.changelog?.abort();
  };

  const begin = async (manifest: Manifest): Promise<Open> => {
    if (target.kind === 'file' && stored.length > 0)
      throw new SbkError(`-o ${target.path} takes one archive, but the input holds more (${manifest.name} is the second)`, ExitCode.usage);
    const pack = tar.pack();
    const digest = digestStream();
    const gz = opts.compressor(opts.level, opts.threads, manifest);
    let file: AtomicFile | undefined;
    let finalPath = '-';
    let sink: Writable;
    if (target.kind === 'stdout') {
      sink = process.stdout;
    } else {
      finalPath =
        target.kind === 'file'
          ? path.resolve(target.path)
          : path.join(storeDir(target), archiveFileName(manifest.container, manifest.time, manifest.full));
      // Checked up front to fail before the work; the final link() checks again (no clobbering).
      if (await stat(finalPath).then(() => true, () => false))
        throw new SbkError(`${finalPath} already exists; not overwriting it`, ExitCode.conflict);
      file = await createAtomicFile(finalPath, 0o644, { writeBehind: WRITE_BEHIND_BYTES });
      sink = file.stream;
    }
    const piping = pipeline(pack, gz, digest, sink, { end: target.kind !== 'stdout', signal: opts.signal });
    piping.catch(() => {}); // handled where awaited; reading the input may fail first
    return { manifest, pack, piping, digest, file, finalPath };
  };

  const writeEntry = async (pack: tar.Pack, header: tar.Header, body: AsyncIterable<Buffer>, tee?: Writable) => {
    await new Promise<void>((resolve, reject) => {
      const h = {
        name: header.name,
        size: header.size,
        mode: header.mode,
        mtime: header.mtime,
        type: header.type,
        uid: header.uid,
        gid: header.gid,
        uname: header.uname,
        gname: header.gname,
      } as tar.Header;
      const sink = pack.entry(h, (err) => (err ? reject(err) : resolve()));
      // A failing entry reports through the callback; its 'error' event must not go unheard
      // (the pack is destroyed when the output fails, e.g. a full disk).
      sink.on('error', () => {});
      if (header.type === 'directory') return;
      (async () => {
        for await (const c of body) {
          if (tee) await writeChunk(tee, c);
          if (!sink.write(c)) await new Promise<void>((r) => sink.once('drain', () => r()));
        }
        (sink as unknown as { end(): void }).end();
      })().catch((err: Error) => {
        sink.destroy(err);
        reject(err);
      });
    });
  };

  try {
    for await (const entry of readArchives(input, { source: 'stdin' })) {
      opts.signal?.throwIfAborted();
      if (entry.role === 'manifest') {
        current = await begin(entry.manifest);
        log.verbose(`${entry.manifest.name}: packing`);
      }
      const o = current!;
      if (entry.role === 'changelog' && (target.kind === 'store' || target.kind === 'dir')) {
        const m = o.manifest;
        o.changelog = await createAtomicFile(path.join(storeDir(target), changelogFileName(m.container, m.time, m.full)));
        await writeOrExplain(o, () => writeEntry(o.pack, entry.header, entry.body, o.changelog!.stream));
        await new Promise<void>((resolve, reject) => {
          // end()'s callback also reports a failed write (disk full): never commit after one.
          o.changelog!.stream.end((err?: Error | null) => (err ? reject(err) : resolve()));
        });
        continue;
      }
      await writeOrExplain(o, () => writeEntry(o.pack, entry.header, entry.body));
      if (entry.role !== 'trailer') continue;

      // The trailer was verified by readArchives: the archive is whole. Finish and store it.
      o.pack.finalize();
      await o.piping;
      const m = o.manifest;
      const result: StoredArchive = { name: m.name, path: o.finalPath, size: o.digest.size, sha256: o.digest.sha256(), manifest: m };
      const place = async () => {
        if (o.file) await o.file.commit({ noClobber: true });
        // Sidecar after the archive: a killed run may leave an archive without its changelog,
        // never a changelog that points at no archive.
        if (o.changelog) await o.changelog.commit();
        if (target.kind === 'store') await confirm(target.dirs, m, result, log, opts.onPruneError);
      };
      // Storing and confirming happen under the container's lock (pruning takes it too). The
      // hold is short, so wait for it rather than fail a whole backup.
      if (target.kind === 'store' || target.kind === 'dir')
        await withLock(backupLockFile(storeDir(target), m.container), { holder: `sbk-pack ${m.name}`, wait: 600, signal: opts.signal }, place);
      else await place();
      stored.push(result);
      current = undefined;
      await opts.onStored?.(result);
    }
  } catch (err) {
    await abort(current, err);
    if (current && target.kind === 'store') {
      // The backup failed here: its snapshot set (unconfirmed, on this host) is of no use. Stop
      // reading first, so that the sbk-send upstream stops sending from it (see discardFailedSet).
      await stopReading(source, input);
      const m = current.manifest;
      await discardFailedSet(target.dirs, m.container, m.time, m.full, log).catch((e: Error) =>
        log.warn(`${m.name}: could not remove its snapshot set: ${e.message}`),
      );
    }
    if (opts.signal?.aborted) throw opts.signal.reason;
    throw err;
  }
  return stored;
}

// ---------------------------------------------------------------------------------------------
// --store DIR: the receiving end of a remote backup

/** The receipt of an archive stored by `--store` (see receipts.ts). */
export function receiptFor(a: StoredArchive, host = hostname()): Receipt {
  const m = a.manifest!;
  return {
    sbk: 'receipt',
    format: RECEIPT_FORMAT,
    name: m.name,
    container: m.container,
    time: m.time,
    full: m.full,
    archive: path.basename(a.path),
    size: a.size,
    sha256: a.sha256,
    host,
    path: a.path,
    stored: new Date().toISOString(),
    volumes: m.volumes.map((v) => ({ name: v.name, uuid: v.uuid })),
  };
}

export interface StoreOptions {
  dir: string;
  log: Log;
  signal?: AbortSignal;
  /** For a plain tar input (sbk-send output), which is compressed here. */
  level: number;
  threads?: number;
  compressor: (level: number, threads?: number, manifest?: Manifest) => NodeJS.ReadWriteStream;
  onStored?: (a: StoredArchive) => Promise<void> | void;
}

/**
 * `sbk-pack --store DIR`: stores every archive of the input in DIR under its own name, with its
 * changelog sidecar, under the container's lock of DIR; confirms nothing (DIR's host may hold
 * no snapshots). The input is the gzip stream of `sbk-pack -o -` (kept byte for byte) or the
 * tar stream of sbk-send (compressed here).
 */
export async function storeArchives(source: Readable, opts: StoreOptions): Promise<StoredArchive[]> {
  const { head, stream } = await peekStream(source, 512);
  const kind = sniff(head);
  if (kind === 'gzip') return storeGzipArchives(stream, opts);
  if (kind === 'tar')
    return packArchives(stream, { ...opts, target: { kind: 'dir', dir: opts.dir } });
  stream.destroy();
  if (kind === 'empty') throw new SbkError('no input (did the stage before fail?): expected the output of sbk-pack -o - (or of sbk-send) on stdin', ExitCode.badInput);
  throw new SbkError(
    `expected sbk archives (the gzip stream of sbk-pack -o -, or the tar stream of sbk-send) on stdin, got ${describeKind[kind]}${
      kind === 'ndjson' ? ' (pipe the records through sbk-send first)' : ''
    }`,
    ExitCode.badInput,
  );
}

/** Pulls the input chunk by chunk, with room to push back what belongs to the next member. */
class ByteReader {
  private readonly it: AsyncIterator<Buffer>;
  private pending: Buffer[] = [];
  /** Bytes handed out so far (for messages). */
  offset = 0;
  constructor(private readonly stream: Readable) {
    this.it = (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }
  async next(): Promise<Buffer | undefined> {
    let b = this.pending.shift();
    if (!b) {
      const r = await this.it.next();
      if (r.done) return undefined;
      b = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    }
    this.offset += b.length;
    return b;
  }
  unshift(b: Buffer): void {
    if (b.length === 0) return;
    this.offset -= b.length;
    this.pending.unshift(b);
  }
  /** Exactly n bytes, or fewer at the end of the input. */
  async read(n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let have = 0;
    while (have < n) {
      const b = await this.next();
      if (!b) break;
      const take = Math.min(n - have, b.length);
      parts.push(b.subarray(0, take));
      this.unshift(b.subarray(take));
      have += take;
    }
    return Buffer.concat(parts);
  }
  /** Up to and including the next zero byte (a gzip FNAME/FCOMMENT field). */
  async readZeroTerminated(limit: number): Promise<Buffer | undefined> {
    const parts: Buffer[] = [];
    let have = 0;
    for (;;) {
      const b = await this.next();
      if (!b) return undefined;
      const z = b.indexOf(0);
      if (z >= 0) {
        parts.push(b.subarray(0, z + 1));
        this.unshift(b.subarray(z + 1));
        return Buffer.concat(parts);
      }
      parts.push(b);
      have += b.length;
      if (have > limit) return undefined;
    }
  }
  destroy(): void {
    this.stream.destroy();
  }
}

const GZ_FHCRC = 2;
const GZ_FEXTRA = 4;
const GZ_FNAME = 8;
const GZ_FCOMMENT = 16;

/** Reads one gzip member header (RFC 1952); undefined at the end of the input. */
async function readGzipHeader(r: ByteReader, index: number): Promise<Buffer | undefined> {
  const at = `gzip member ${index + 1} (byte ${r.offset})`;
  const cut = () => new SbkError(`stdin: the gzip stream is cut short in the header of ${at}`, ExitCode.corrupt);
  const fixed = await r.read(10);
  if (fixed.length === 0) return undefined;
  if (fixed[0] !== 0x1f || (fixed.length > 1 && fixed[1] !== 0x8b))
    throw new SbkError(
      index === 0
        ? 'stdin: not gzip data'
        : `stdin: ${fixed.length < 10 ? 'a few' : 'more'} bytes after archive ${index} that are not a gzip member (trailing garbage)`,
      index === 0 ? ExitCode.badInput : ExitCode.corrupt,
    );
  if (fixed.length < 10) throw cut();
  if (fixed[2] !== 8) throw new SbkError(`stdin: ${at} uses compression method ${fixed[2]}, not deflate`, ExitCode.corrupt);
  const flags = fixed[3]!;
  if (flags & 0xe0) throw new SbkError(`stdin: ${at} has reserved flag bits set`, ExitCode.corrupt);
  const parts = [fixed];
  if (flags & GZ_FEXTRA) {
    const len = await r.read(2);
    if (len.length < 2) throw cut();
    const extra = await r.read(len.readUInt16LE(0));
    if (extra.length < len.readUInt16LE(0)) throw cut();
    parts.push(len, extra);
  }
  for (const f of [GZ_FNAME, GZ_FCOMMENT]) {
    if (!(flags & f)) continue;
    const field = await r.readZeroTerminated(64 * 1024);
    if (!field) throw cut();
    parts.push(field);
  }
  if (flags & GZ_FHCRC) {
    const hcrc = await r.read(2);
    if (hcrc.length < 2) throw cut();
    if ((crc32(Buffer.concat(parts), 0) & 0xffff) !== hcrc.readUInt16LE(0))
      throw new SbkError(`stdin: ${at} fails its header CRC`, ExitCode.corrupt);
    parts.push(hcrc);
  }
  return Buffer.concat(parts);
}

/** A file being received under a temporary name in DIR; its final name is known later (from the manifest). */
interface Incoming {
  readonly temp: string;
  size: number;
  write(b: Buffer): Promise<void>;
  sha256(): string;
  /** fsync, then link to `finalPath` (never replacing a file), remove the temporary name. */
  commit(finalPath: string): Promise<void>;
  abort(): Promise<void>;
}

async function openIncoming(dir: string): Promise<Incoming> {
  const temp = tempNameFor(path.join(dir, 'incoming.tar.gz'));
  const fh: FileHandle = await open(temp, 'wx', 0o644);
  const behind = new WriteBehind(fh, WRITE_BEHIND_BYTES);
  const hash: Hash = createHash('sha256');
  let closed = false;
  let committed = false;
  const close = async () => {
    if (!closed) {
      closed = true;
      await behind.settle().catch(() => {}); // never close under a flush in flight
      await fh.close();
    }
  };
  const inc: Incoming = {
    temp,
    size: 0,
    async write(b) {
      let off = 0;
      while (off < b.length) {
        const { bytesWritten } = await fh.write(b, off, b.length - off);
        if (!(bytesWritten > 0)) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
        off += bytesWritten;
      }
      hash.update(b);
      inc.size += b.length;
      behind.wrote(b.length);
    },
    sha256: () => hash.copy().digest('hex'),
    async commit(finalPath) {
      await behind.settle();
      await fh.sync();
      await close();
      try {
        await link(temp, finalPath);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EEXIST')
          throw new SbkError(`${finalPath} already exists; not overwriting it`, ExitCode.conflict);
        throw err;
      }
      committed = true;
      await unlink(temp);
      await fsyncDir(path.dirname(finalPath));
    },
    async abort() {
      if (committed) return;
      await close().catch(() => {});
      await rm(temp, { force: true });
    },
  };
  return inc;
}

/** What the reader of one member's tar learnt: the manifest, the changelog sidecar, the trailer. */
interface MemberState {
  manifest?: Manifest;
  changelog?: AtomicFile;
  verified: boolean;
}

/** Reads the one archive of a member (verifying every sha256 against its trailer). */
async function readMemberArchive(tarStream: Readable, index: number, dir: string, state: MemberState, signal?: AbortSignal): Promise<void> {
  const source = `stdin, archive ${index + 1}`;
  for await (const entry of readArchives(tarStream, { source })) {
    signal?.throwIfAborted();
    if (entry.archive > 0)
      throw new SbkError(
        `${source}: the gzip member of ${state.manifest?.name ?? 'an archive'} holds a second archive (${entry.manifest.name}); sbk-pack -o - writes one member per archive`,
        ExitCode.corrupt,
      );
    const m = entry.manifest;
    if (entry.role === 'manifest') {
      state.manifest = m;
      const finalPath = path.join(dir, archiveFileName(m.container, m.time, m.full));
      // Checked up front to fail before the work; the final link() checks again.
      if (await stat(finalPath).then(() => true, () => false))
        throw new SbkError(`${finalPath} already exists; not overwriting it`, ExitCode.conflict);
    } else if (entry.role === 'changelog') {
      const f = (state.changelog = await createAtomicFile(path.join(dir, changelogFileName(m.container, m.time, m.full))));
      for await (const c of entry.body) {
        await writeChunk(f.stream, c);
      }
      await new Promise<void>((resolve, reject) => f.stream.end((err?: Error | null) => (err ? reject(err) : resolve())));
    } else if (entry.role === 'trailer') {
      state.verified = true;
    }
    // Other entries are drained (and hashed) by readArchives.
  }
  if (!state.verified) throw new SbkError(`${source}: the archive ends without its trailer (cut short?)`, ExitCode.corrupt);
}

/** Writes to a zlib stream; resolves when the chunk has been processed (all its output produced). */
function zwrite(z: zlib.InflateRaw, b: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    z.write(b, (err) => (err ? reject(err) : resolve()));
  });
}

/**
 * The gzip stream of `sbk-pack -o -`: one member per archive. Each member's bytes go to a
 * temporary file in DIR as they are, and through a raw inflater (one per member: zlib stops at
 * the end of the deflate data and says how much input it used, which is how the member's end is
 * found) into the archive reader. Only when the member's gzip trailer (CRC-32, length) and the
 * archive's own trailer (every sha256) check out is the file linked under its final name: the
 * stored file is exactly what the sender wrote, and a cut or corrupt stream leaves nothing under
 * a final name.
 */
async function storeGzipArchives(stream: Readable, opts: StoreOptions): Promise<StoredArchive[]> {
  const { dir, log, signal } = opts;
  // DIR may be shared by hosts whose pids mean nothing here: only files an hour old go.
  for (const n of await removeStaleTemps(dir, { minAgeMs: 3600_000 })) log.info(`removing ${n}, left by a transfer that did not finish`);
  const reader = new ByteReader(stream);
  const stored: StoredArchive[] = [];
  try {
    for (let index = 0; ; index++) {
      signal?.throwIfAborted();
      const header = await readGzipHeader(reader, index);
      if (!header) {
        if (index === 0) throw new SbkError('no input (did the stage before fail?): expected the output of sbk-pack -o - on stdin', ExitCode.badInput);
        break;
      }
      const a = await storeMember(reader, header, index, opts);
      log.verbose(`${a.name}: stored ${a.path} (${a.size} bytes, sha256 ${a.sha256})`);
      stored.push(a);
      await opts.onStored?.(a);
    }
  } catch (err) {
    reader.destroy();
    if (signal?.aborted) throw signal.reason;
    throw err;
  }
  return stored;
}

async function storeMember(reader: ByteReader, header: Buffer, index: number, opts: StoreOptions): Promise<StoredArchive> {
  const { dir, signal } = opts;
  const file = await openIncoming(dir);
  const inflater = zlib.createInflateRaw({ chunkSize: 256 * 1024 });
  let crc = 0;
  let size = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      crc = crc32(chunk, crc);
      size += chunk.length;
      cb(null, chunk);
    },
  });
  inflater.on('error', (err) => tap.destroy(err));
  inflater.pipe(tap);
  const state: MemberState = { verified: false };
  const reading = readMemberArchive(tap, index, dir, state, signal);
  // Any wait below also ends when the archive reader fails (else a full pipe would hang it).
  const readerFailed = new Promise<never>((_, reject) => {
    reading.catch(reject);
    // A signal while waiting for input (an idle ssh link) must not wait for more input.
    if (signal) {
      if (signal.aborted) reject(signal.reason);
      else signal.addEventListener('abort', () => reject(signal.reason), { once: true });
    }
  });
  readerFailed.catch(() => {});
  const race = <T>(p: Promise<T>) => Promise.race([p, readerFailed]);
  const cut = (where: string) =>
    new SbkError(`stdin: the gzip stream is cut short ${where} of archive ${index + 1}${state.manifest ? ` (${state.manifest.name})` : ''}`, ExitCode.corrupt);
  try {
    await race(file.write(header));
    for (;;) {
      signal?.throwIfAborted();
      const chunk = await race(reader.next());
      if (!chunk) throw cut('inside the compressed data');
      const before = inflater.bytesWritten;
      try {
        await race(zwrite(inflater, chunk));
      } catch (err) {
        if (err instanceof SbkError) throw err;
        throw new SbkError(`stdin: the gzip data of archive ${index + 1} is corrupt (${(err as Error).message})`, ExitCode.corrupt, { cause: err });
      }
      const used = inflater.bytesWritten - before;
      if (used > 0) await race(file.write(used === chunk.length ? chunk : chunk.subarray(0, used)));
      if (used < chunk.length) {
        // The deflate data ended inside this chunk: the rest is the member's trailer and what follows.
        reader.unshift(chunk.subarray(used));
        break;
      }
    }
    const trailer = await race(reader.read(8));
    if (trailer.length < 8) throw cut('in the gzip trailer');
    await race(file.write(trailer));
    await reading;
    if (trailer.readUInt32LE(0) !== crc >>> 0 || trailer.readUInt32LE(4) !== size % 2 ** 32)
      throw new SbkError(`stdin: archive ${index + 1}${state.manifest ? ` (${state.manifest.name})` : ''} fails its gzip CRC/length check`, ExitCode.corrupt);
    const m = state.manifest!;
    const finalPath = path.join(dir, archiveFileName(m.container, m.time, m.full));
    const result: StoredArchive = { name: m.name, path: finalPath, size: file.size, sha256: file.sha256(), manifest: m };
    await withLock(backupLockFile(dir, m.container), { holder: `sbk-pack --store ${m.name}`, wait: 600, signal }, async () => {
      await file.commit(finalPath);
      // Sidecar after the archive, as in the local store.
      if (state.changelog) await state.changelog.commit();
    });
    return result;
  } catch (err) {
    // With an error: the archive reader only hears of a destroy that carries one.
    const why = err instanceof Error ? err : new Error(String(err));
    inflater.destroy(why);
    tap.destroy(why);
    await reading.catch(() => {});
    await file.abort();
    await state.changelog?.abort();
    throw err;
  } finally {
    inflater.destroy();
  }
}
