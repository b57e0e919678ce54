// sbk-pack's work: reads a stream of sbk archives (uncompressed tar, as sbk-send writes it),
// checks each against its trailer while compressing it, and stores it atomically: the archive
// appears under its final name only when complete and verified. Then the changelog sidecar is
// placed and the snapshot set is confirmed (it may now be a parent).
import { createHash } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Duplex, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { readArchives, type ArchiveEntry, type Manifest } from '../../formats/archive/archive.js';
import { writeTarEntry } from '../../formats/archive/tar-entry.js';
import { codecByName, DEFAULT_CODEC, type Codec, type CodecCounters } from '../../formats/codecs/codec.js';
import { createAtomicFile, removeStaleTemps, WRITE_BEHIND_BYTES, type AtomicFile } from '../../system/atomic.js';
import { endStream } from '../../core/streams.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import { peekStream, sniff, describeKind } from '../../formats/input.js';
import { archiveFileName, archiveFileNames, changelogFileName, setDirName, type Dirs } from '../../core/layout.js';
import { confirmBackupSet, discardFailedSet } from '../../system/sets.js';
import { backupLockFile, withLock } from '../../system/lock.js';
import type { Log } from '../../core/log.js';
import type { ProgressHooks } from '../../core/progress.js';

export type PackTarget =
  | { kind: 'store'; dirs: Dirs } // <backup-dir>/<name>.tar.gz (.tar.zst) + sidecar + confirmation
  | { kind: 'dir'; dir: string } // --store DIR: <DIR>/<name>.tar.gz (.tar.zst) + sidecar, no confirmation
  | { kind: 'file'; path: string } // -o FILE: exactly one archive
  | { kind: 'stdout' }; // -o -: compressed members one after another

export interface StoredArchive {
  name: string;
  path: string;
  size: number;
  sha256: string;
  manifest: Manifest;
}

/** How archives are compressed: by which codec, how hard, and who watches the compressor. */
export interface CompressionOptions {
  /** The codec's name (default: gzip). */
  codec?: string;
  /** In the codec's range (its `levels`); its default when not given. */
  level?: number;
  threads?: number;
  /** Each archive's compression: started (with the compressor's counters, which progress reads), ended once stored. */
  progress?: Omit<ProgressHooks<ArchiveCompression>, 'add'>;
}

/** An archive's compression as it starts: its manifest, and the compressor's byte counters. */
export interface ArchiveCompression {
  manifest: Manifest;
  counters: CodecCounters;
}

export interface PackOptions extends CompressionOptions {
  target: PackTarget;
  log: Log;
  signal?: AbortSignal;
  /** Called once per archive when it is safely stored. */
  onStored?: (a: StoredArchive) => Promise<void> | void;
  /** Snapshot sets could not be pruned after a confirmation (the archive is stored). */
  onPruneError?: (e: SbkError) => void;
}

/** The codec named in `opts` (gzip when none is). */
export function codecOf(opts: { codec?: string }): Codec {
  if (opts.codec === undefined) return DEFAULT_CODEC;
  const codec = codecByName(opts.codec);
  if (!codec) throw new SbkError(`unknown compression ${JSON.stringify(opts.codec)}`, ExitCode.usage);
  return codec;
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
      : codecByName(kind)
        ? ' (already compressed: this looks like sbk-pack output; sbk-pack --store DIR takes it)'
        : '';
  throw new SbkError(`expected the tar stream of sbk-send on stdin, got ${describeKind[kind]}${hint}`, ExitCode.badInput);
}

/**
 * Fails when one of the paths is taken: the final name, and in a store the backup's name with
 * another codec's suffix (one backup, one archive). Checked before the work, and again under the
 * lock before the final link(), which itself never clobbers.
 */
export async function refuseExisting(paths: string[]): Promise<void> {
  for (const p of paths)
    if (await stat(p).then(() => true, () => false)) throw new SbkError(`${p} already exists; not overwriting it`, ExitCode.conflict);
}

/** What refuseExisting checks for an archive stored in `dir` (or written to -o FILE). */
function takenNames(o: { manifest: Manifest; finalPath: string }, dir: string | undefined): string[] {
  const m = o.manifest;
  return dir ? archiveFileNames(m.container, m.time, m.full).map((n) => path.join(dir, n)) : [o.finalPath];
}

/**
 * Removes the temporary files of killed runs. The directory may be shared by hosts whose pids
 * mean nothing here, so only files an hour old go.
 */
export async function removeLeftovers(dir: string, log: Log, message: (name: string) => string): Promise<void> {
  for (const n of await removeStaleTemps(dir, { minAgeMs: 3600_000 })) log.info(message(n));
}

/** One archive being packed. */
interface Packing {
  manifest: Manifest;
  pack: tar.Pack;
  piping: Promise<void>;
  digest: ReturnType<typeof digestStream>;
  file?: AtomicFile;
  finalPath: string;
  changelog?: AtomicFile;
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

/** The directory archives are stored in, for the targets that have one. */
const storeDir = (t: PackTarget): string | undefined => (t.kind === 'store' ? t.dirs.backupDir : t.kind === 'dir' ? t.dir : undefined);

/**
 * When the output fails (disk full, the reader gone) the pack is destroyed and the next entry
 * fails with a bare "already finalized or destroyed": report the output's own error instead.
 */
async function writeOrExplain(o: Packing, write: () => Promise<void>): Promise<void> {
  try {
    await write();
  } catch (err) {
    await o.piping;
    throw err;
  }
}

/** Copies an entry into the archive's tar, keeping the fields of its header sbk writes. */
function copyEntry(o: Packing, entry: ArchiveEntry, tee?: Writable): Promise<void> {
  const { name, size, mode, mtime, type, uid, gid, uname, gname } = entry.header;
  return writeOrExplain(o, () =>
    writeTarEntry(o.pack, { name, size, mode, mtime, type, uid, gid, uname, gname } as tar.Header, entry.body, { tee }),
  );
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

/** Opens the output of an archive whose manifest was just read: tar → compressor → digest → file. */
async function startArchive(manifest: Manifest, opts: PackOptions, storedSoFar: number): Promise<Packing> {
  const { target } = opts;
  if (target.kind === 'file' && storedSoFar > 0)
    throw new SbkError(`-o ${target.path} takes one archive, but the input holds more (${manifest.name} is the second)`, ExitCode.usage);
  const pack = tar.pack();
  const digest = digestStream();
  const codec = codecOf(opts);
  let file: AtomicFile | undefined;
  let finalPath = '-';
  let sink: Writable;
  if (target.kind === 'stdout') {
    sink = process.stdout;
  } else {
    finalPath =
      target.kind === 'file'
        ? path.resolve(target.path)
        : path.join(storeDir(target)!, archiveFileName(manifest.container, manifest.time, manifest.full, codec.suffix));
    await refuseExisting(takenNames({ manifest, finalPath }, storeDir(target)));
    file = await createAtomicFile(finalPath, 0o644, { writeBehind: WRITE_BEHIND_BYTES });
    sink = file.stream;
  }
  const compressor: Duplex & CodecCounters = codec.compress({ level: opts.level, threads: opts.threads });
  opts.progress?.start({ manifest, counters: compressor });
  const piping = pipeline(pack, compressor, digest, sink, { end: target.kind !== 'stdout', signal: opts.signal });
  piping.catch(() => {}); // handled where awaited; reading the input may fail first
  return { manifest, pack, piping, digest, file, finalPath };
}

/** The changelog entry: into the archive and, for a store, into its sidecar file too. */
async function packChangelog(o: Packing, entry: ArchiveEntry, dir: string): Promise<void> {
  const m = o.manifest;
  o.changelog = await createAtomicFile(path.join(dir, changelogFileName(m.container, m.time, m.full)));
  await copyEntry(o, entry, o.changelog.stream);
  await endStream(o.changelog.stream);
}

/** The trailer was verified by readArchives: the archive is whole. Finish, store, confirm it. */
async function finishArchive(o: Packing, opts: PackOptions): Promise<StoredArchive> {
  const { target, log } = opts;
  o.pack.finalize();
  await o.piping;
  const m = o.manifest;
  const result: StoredArchive = { name: m.name, path: o.finalPath, size: o.digest.size, sha256: o.digest.sha256(), manifest: m };
  const dir = storeDir(target);
  const place = async () => {
    if (dir) await refuseExisting(takenNames(o, dir));
    if (o.file) await o.file.commit({ noClobber: true });
    // Sidecar after the archive: a killed run may leave an archive without its changelog,
    // never a changelog that points at no archive.
    if (o.changelog) await o.changelog.commit();
    if (target.kind === 'store') await confirm(target.dirs, m, result, log, opts.onPruneError);
  };
  // Storing and confirming happen under the container's lock (pruning takes it too). The
  // hold is short, so wait for it rather than fail a whole backup.
  if (dir) await withLock(backupLockFile(dir, m.container), { holder: `sbk-pack ${m.name}`, wait: 600, signal: opts.signal }, place);
  else await place();
  opts.progress?.end();
  return result;
}

/** Leaves nothing of an archive that failed: no output in progress, no temporary files. */
async function abandonArchive(o: Packing, err: unknown): Promise<void> {
  o.pack.destroy(err as Error);
  await o.piping.catch(() => {});
  await o.file?.abort();
  await o.changelog?.abort();
}

export async function packArchives(source: Readable, opts: PackOptions): Promise<StoredArchive[]> {
  const input = await checkInput(source);
  const { target, log } = opts;
  const dir = storeDir(target);
  if (dir) await removeLeftovers(dir, log, (n) => `removed ${n}, left by a run that did not finish`);
  const stored: StoredArchive[] = [];
  let current: Packing | undefined;
  try {
    for await (const entry of readArchives(input, { source: 'stdin' })) {
      opts.signal?.throwIfAborted();
      if (entry.role === 'manifest') {
        current = await startArchive(entry.manifest, opts, stored.length);
        log.verbose(`${entry.manifest.name}: packing`);
      }
      const o = current!;
      if (entry.role === 'changelog' && dir) {
        await packChangelog(o, entry, dir);
        continue;
      }
      await copyEntry(o, entry);
      if (entry.role !== 'trailer') continue;
      const result = await finishArchive(o, opts);
      stored.push(result);
      current = undefined;
      await opts.onStored?.(result);
    }
  } catch (err) {
    if (current) await abandonArchive(current, err);
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
