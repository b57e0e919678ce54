// sbk-pack's work: reads a stream of sbk archives (uncompressed tar, as sbk-send writes it),
// checks each against its trailer while compressing it, and stores it atomically: the archive
// appears under its final name only when complete and verified. Then the changelog sidecar is
// placed and the snapshot set is confirmed (it may now be a parent).
import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { readArchives, type Manifest } from './archive.js';
import { createAtomicFile, type AtomicFile } from './atomic.js';
import { SbkError, ExitCode } from './errors.js';
import { peekStream, sniff, describeKind } from './input.js';
import { archiveFileName, changelogFileName, setDirName, type Dirs } from './layout.js';
import { confirmSet } from './snapshots.js';
import { backupLockFile, withLock } from './lock.js';
import type { Log } from './log.js';

export type PackTarget =
  | { kind: 'store'; dirs: Dirs } // <backup-dir>/<name>.tar.gz + sidecar + confirmation
  | { kind: 'file'; path: string } // -o FILE: exactly one archive
  | { kind: 'stdout' }; // -o -: gzip members one after another

export interface StoredArchive {
  name: string;
  path: string;
  size: number;
  sha256: string;
}

export interface PackOptions {
  target: PackTarget;
  level: number;
  threads?: number;
  log: Log;
  signal?: AbortSignal;
  /** Makes the compressor (a Duplex: bytes in, gzip out). */
  compressor: (level: number, threads?: number) => NodeJS.ReadWriteStream;
  /** Called once per archive when it is safely stored. */
  onStored?: (a: StoredArchive) => Promise<void> | void;
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
  if (kind === 'empty') throw new SbkError('no input: expected the tar stream of sbk-send on stdin', ExitCode.badInput);
  const hint =
    kind === 'ndjson'
      ? ' (pipe the records through sbk-send first)'
      : kind === 'gzip'
        ? ' (already compressed: this looks like sbk-pack output)'
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

/** Marks the backup's snapshot set (if it is on this host) as a valid parent. */
async function confirm(dirs: Dirs, m: Manifest, result: StoredArchive, log: Log): Promise<void> {
  const set = path.join(dirs.backupDir, m.container, setDirName(m.time, m.full));
  if (!(await stat(set).then((s) => s.isDirectory(), () => false))) {
    log.warn(`${m.name}: no snapshot set ${set} here to confirm; stored the archive only`);
    return;
  }
  await confirmSet(set, {
    sbk: 'confirmation',
    name: m.name,
    archive: path.basename(result.path),
    size: result.size,
    sha256: result.sha256,
    stored: new Date().toISOString(),
  });
}

export async function packArchives(source: Readable, opts: PackOptions): Promise<StoredArchive[]> {
  const input = await checkInput(source);
  const { target, log } = opts;
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
    const gz = opts.compressor(opts.level, opts.threads);
    let file: AtomicFile | undefined;
    let finalPath = '-';
    let sink: Writable;
    if (target.kind === 'stdout') {
      sink = process.stdout;
    } else {
      finalPath =
        target.kind === 'file'
          ? path.resolve(target.path)
          : path.join(target.dirs.backupDir, archiveFileName(manifest.container, manifest.time, manifest.full));
      // Checked up front to fail before the work; the final link() checks again (no clobbering).
      if (await stat(finalPath).then(() => true, () => false))
        throw new SbkError(`${finalPath} already exists; not overwriting it`, ExitCode.conflict);
      file = await createAtomicFile(finalPath);
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
      if (header.type === 'directory') return;
      (async () => {
        for await (const c of body) {
          if (tee && !tee.write(c)) await new Promise<void>((r) => tee.once('drain', () => r()));
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
      if (entry.role === 'changelog' && target.kind === 'store') {
        const m = o.manifest;
        o.changelog = await createAtomicFile(path.join(target.dirs.backupDir, changelogFileName(m.container, m.time)));
        await writeEntry(o.pack, entry.header, entry.body, o.changelog.stream);
        await new Promise<void>((resolve, reject) => {
          // end()'s callback also reports a failed write (disk full): never commit after one.
          o.changelog!.stream.end((err?: Error | null) => (err ? reject(err) : resolve()));
        });
        continue;
      }
      await writeEntry(o.pack, entry.header, entry.body);
      if (entry.role !== 'trailer') continue;

      // The trailer was verified by readArchives: the archive is whole. Finish and store it.
      o.pack.finalize();
      await o.piping;
      const m = o.manifest;
      const result: StoredArchive = { name: m.name, path: o.finalPath, size: o.digest.size, sha256: o.digest.sha256() };
      const place = async () => {
        if (o.file) await o.file.commit({ noClobber: true });
        // Sidecar after the archive: a killed run may leave an archive without its changelog,
        // never a changelog that points at no archive.
        if (o.changelog) await o.changelog.commit();
        if (target.kind === 'store') await confirm(target.dirs, m, result, log);
      };
      // Storing and confirming happen under the container's lock (pruning takes it too). The
      // hold is short, so wait for it rather than fail a whole backup.
      if (target.kind === 'store')
        await withLock(backupLockFile(target.dirs.backupDir, m.container), { holder: `sbk-pack ${m.name}`, wait: 600, signal: opts.signal }, place);
      else await place();
      stored.push(result);
      current = undefined;
      await opts.onStored?.(result);
    }
  } catch (err) {
    await abort(current, err);
    if (opts.signal?.aborted) throw opts.signal.reason;
    throw err;
  }
  return stored;
}
