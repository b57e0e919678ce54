// sbk-unpack: archives in (paths, a list of paths on stdin, or archive bytes on stdin), a
// restored container out, at <lxc-dir>/<name>. --verify checks archives without restoring.
import path from 'node:path';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { runCli, WAIT_OPTION, parseWait, makeProgress, PROGRESS_OPTION, S3_ENDPOINT_OPTION, S3_CA_OPTION } from './common.js';
import type { S3Options } from '../system/store.js';
import { SbkError, ExitCode, describeSystemError } from '../core/errors.js';
import type { RestoreInput, RestoreProgress } from '../stages/unpack/input.js';
import type { Meter, Progress } from '../core/progress.js';

interface UnpackArgs {
  as?: string;
  force?: boolean;
  start?: boolean;
  stop?: boolean;
  stopTimeout?: number;
  verify?: boolean;
  to?: string;
  wait?: string;
  progress?: boolean;
  tar?: boolean;
  list?: boolean;
  json?: boolean;
  path?: string[];
  tmp?: string;
  s3Endpoint?: string;
  s3Ca?: string;
}

const MAX_LIST = 1024 * 1024;

async function fileInputs(paths: string[], s3: S3Options): Promise<RestoreInput[]> {
  const { openArchiveFile, openRawFile, openArchiveStream } = await import('../formats/archive/open.js');
  const { parseArchiveName } = await import('../core/layout.js');
  const { isS3Url, openStore } = await import('../system/store.js');
  const inputs: RestoreInput[] = [];
  const stores = new Map<string, Awaited<ReturnType<typeof openStore>>>();
  for (const p of paths) {
    if (isS3Url(p)) {
      // An object: streamed from the server as it is restored, never staged here.
      const { splitS3Url } = await import('../system/s3.js');
      const { store: at, file } = splitS3Url(p);
      const store = stores.get(at) ?? (await openStore(at, s3));
      stores.set(at, store);
      const size = await store.sizeOf(file);
      if (size === undefined) throw new SbkError(`${p}: no such archive`, ExitCode.notFound);
      inputs.push({
        source: p,
        open: async () => openArchiveStream(await store.openRead(file), p),
        head: () => store.openHead(file),
        nameInfo: parseArchiveName(file),
        size,
      });
      continue;
    }
    const abs = path.resolve(p);
    // All checked before anything is read: a typo in the fourth path fails in a second.
    let st;
    try {
      st = await stat(abs);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') throw new SbkError(`${p}: no such archive`, ExitCode.notFound);
      // Other errors (EACCES: the file may well be there, a directory on its path is closed to
      // this user) in the one wording per errno.
      throw describeSystemError(err, p) ?? new SbkError(`${p}: cannot read (${(err as Error).message})`, ExitCode.failure, { cause: err });
    }
    if (!st.isFile()) throw new SbkError(`${p} is not a regular file`, ExitCode.badInput);
    inputs.push({ source: abs, open: () => openArchiveFile(abs), head: () => openRawFile(abs), nameInfo: parseArchiveName(abs), size: st.size });
  }
  return inputs;
}

/** Stdin holds either archive bytes (gzip, zstd, both, or tar) or a list of paths (or s3:// URLs), one a line: the first bytes tell. */
async function stdinInputs(s3: S3Options): Promise<{ inputs: RestoreInput[]; files: boolean }> {
  const { peekStream, sniff, describeKind } = await import('../formats/input.js');
  const { openArchiveStream } = await import('../formats/archive/open.js');
  if (process.stdin.isTTY)
    throw new SbkError('no archives: give their paths, or pipe `sbk-plan CONTAINER` or archive bytes into stdin', ExitCode.usage);
  const { head, stream } = await peekStream(process.stdin, 512);
  const kind = sniff(head);
  if (kind === 'gzip' || kind === 'zstd' || kind === 'tar')
    return { inputs: [{ source: 'stdin', open: () => openArchiveStream(stream, 'stdin') }], files: false };
  if (kind === 'empty') throw new SbkError('no input (did the stage before fail?): stdin is empty (expected archive paths or archive bytes)', ExitCode.badInput);
  if (kind !== 'text')
    throw new SbkError(`expected archive paths or sbk archives on stdin, got ${describeKind[kind]}`, ExitCode.badInput);
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of stream as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > MAX_LIST) throw new SbkError('the list of archive paths on stdin is larger than 1 MiB', ExitCode.badInput);
    chunks.push(c);
  }
  const paths = Buffer.concat(chunks)
    .toString('utf8')
    .split('\n')
    .map((l) => l.replace(/\r$/, ''))
    .filter((l) => l.trim() !== '');
  if (paths.length === 0) throw new SbkError('no archive paths on stdin', ExitCode.badInput);
  return { inputs: await fileInputs(paths, s3), files: true };
}

/** Per volume: bytes, rate, elapsed, and for an archive file how far through it the read is. */
function restoreProgress(progress: Progress, formatBytes: (n: number) => string): RestoreProgress {
  let meter: Meter | undefined;
  return {
    start({ archive, volume, input, tarStream }) {
      const m = (meter = progress.start(`${archive} ${volume}`));
      const size = input.size;
      // A compressed archive's stream is its decompressor: bytesWritten is the compressed bytes consumed.
      const s = tarStream as Readable & { bytesWritten?: number; bytesRead?: number };
      if (size)
        m.extra = () => {
          const at = s.bytesWritten ?? s.bytesRead;
          return at === undefined ? undefined : `archive ${Math.min(100, Math.floor((100 * at) / size))}% of ${formatBytes(size)}`;
        };
    },
    add(n) {
      meter!.bytes += n;
    },
    end() {
      if (meter) progress.finish(meter);
      meter = undefined;
    },
  };
}

/** The options that only --tar or --list take; a tar is never written to a terminal. */
function checkTreeOptions(args: UnpackArgs, mode: 'tar' | 'list' | undefined): void {
  if (!mode) {
    // --to takes a selection too (built in scratch, then moved into DIR).
    const toOk = args.to !== undefined ? ['path', 'tmp'] : [];
    for (const o of ['path', 'tmp', 'json'] as const)
      if (args[o] !== undefined && !toOk.includes(o)) throw new SbkError(`--${o} goes with ${o === 'json' ? '--list' : '--to, --tar or --list'}`, ExitCode.usage);
    if (args.tmp !== undefined && !args.path) throw new SbkError('--tmp goes with --to only together with --path', ExitCode.usage);
    return;
  }
  if (args.json && mode !== 'list') throw new SbkError('--json goes with --list', ExitCode.usage);
  if (mode === 'tar' && process.stdout.isTTY) throw new SbkError('--tar writes a tar on stdout: redirect it to a file or a pipe', ExitCode.usage);
}

export function main(argv: string[]): Promise<void> {
  return runCli<UnpackArgs>(
    {
      name: 'sbk-unpack',
      usage:
        '$0 [--as NAME] [--force [--stop]] [--start] [ARCHIVE...]\n$0 --to DIR [--path PATH]... [ARCHIVE...]\n$0 --tar [--path PATH]... [ARCHIVE...] > point.tar\n$0 --list [--json] [--path PATH]... [ARCHIVE...]\n$0 --verify [ARCHIVE...]\n\nRestores a chain of archives (the Full first) as a container in the LXC dir (by replay when it is not on BTRFS), or with --to replays it into a new directory on any filesystem (no BTRFS, no root). Archives are named as arguments (paths or s3://BUCKET/PREFIX/FILE URLs), listed on stdin one path a line (sbk-plan output), or piped in as bytes (cat a.tar.gz b.tar.zst | sbk-unpack).',
      options: (y) =>
        y
          .option('as', { type: 'string', describe: 'restore under this container name (default: the archived name)' })
          .option('force', { alias: 'f', type: 'boolean', describe: 'replace an existing container, once the new one is complete' })
          .option('stop', { type: 'boolean', describe: 'with --force: stop the container being replaced if it runs (then start the restored one)' })
          .option('stop-timeout', { type: 'number', describe: 'seconds a clean stop may take before lxc-stop -k (default 30)' })
          .option('start', { type: 'boolean', describe: 'start the restored container (lxc-start) and wait until it runs' })
          .option('wait', WAIT_OPTION)
          .option('verify', { type: 'boolean', describe: 'check archives fully (gzip/zstd, tar, sha256, send streams); restore nothing, needs no root' })
          .option('to', { type: 'string', describe: 'replay the chain into DIR (new or empty) on any filesystem: DIR/<volume>/... and the meta files; needs neither BTRFS nor root' })
          .option('tar', { type: 'boolean', describe: "write the container's tree at that point as a pax tar on stdout; restore nothing" })
          .option('list', { type: 'boolean', describe: 'list the files at that point (like tar tv); restore nothing' })
          .option('json', { type: 'boolean', describe: 'with --list: one JSON object per file (NDJSON)' })
          .option('path', { type: 'string', array: true, describe: 'with --to, --tar or --list: only this file or subtree (a container path, /etc/nginx); repeatable' })
          .option('tmp', { type: 'string', describe: 'with --tar, --list or --to --path: where the tree is built meanwhile [env TMPDIR] (default /tmp)' })
          .option('progress', PROGRESS_OPTION)
          .option('s3-endpoint', S3_ENDPOINT_OPTION)
          .option('s3-ca', S3_CA_OPTION)
          .conflicts('verify', ['as', 'force', 'start', 'stop', 'tar', 'list', 'to'])
          .conflicts('to', ['force', 'wait', 'start', 'stop', 'tar', 'list'])
          .conflicts('tar', ['list', 'as', 'force', 'json', 'start', 'stop'])
          .conflicts('list', ['as', 'force', 'start', 'stop'])
          .check((a) => {
            if (a.stop && !a.force) throw new Error('--stop stops the container that --force replaces: give --force too');
            const t = a.stopTimeout as number | undefined;
            if (t !== undefined && (!Number.isInteger(t) || t < 1)) throw new Error('--stop-timeout takes a whole number of seconds from 1');
            return true;
          }),
      run: async (args, ctx) => {
        const { restoreChain } = await import('../stages/unpack/restore.js');
        const { verifyInputs } = await import('../stages/unpack/verify.js');
        const { precheckFiles } = await import('../stages/unpack/input.js');
        const { checkContainerName } = await import('../core/layout.js');
        if (args.as !== undefined) checkContainerName(args.as, '--as name');
        const treeMode = args.tar ? 'tar' : args.list ? 'list' : undefined;
        checkTreeOptions(args, treeMode);
        // sbk-unpack is the end of its pipe (it writes no data to stdout): it may draw.
        const shown = await makeProgress(ctx, args.progress, { last: true });
        const progress = shown.enabled ? restoreProgress(shown, (await import('../core/progress.js')).formatBytes) : undefined;
        const positional = args._.map(String);
        // A signal must stop a read of stdin that waits for its writer (before the first byte,
        // or in a list of paths), as the restore itself stops a waiting read of archive bytes.
        const stopStdin = () => process.stdin.destroy(ctx.signal.reason as Error);
        ctx.signal.throwIfAborted(); // an abort before the listener is in never fires it
        if (!positional.length) ctx.signal.addEventListener('abort', stopStdin, { once: true });
        try {
          const s3 = { endpoint: args.s3Endpoint, ca: args.s3Ca };
          const { inputs, files } = positional.length
            ? { inputs: await fileInputs(positional, s3), files: true }
            : await stdinInputs(s3);
          if (args.verify) {
            await verifyInputs(inputs, { log: ctx.log, signal: ctx.signal, progress });
            return;
          }
          if (files) await precheckFiles(inputs, args.as);
          if (treeMode || (args.to !== undefined && args.path)) {
            const [{ unpackFromTree }, { replayChain }] = await Promise.all([import('../stages/unpack/from-tree.js'), import('../stages/unpack/replay/replay.js')]);
            const produce = (dir: string) => replayChain(inputs, dir, { log: ctx.log, signal: ctx.signal, progress, as: args.as });
            const archiveBytes = files ? inputs.reduce((n, i) => n + (i.size ?? 0), 0) : undefined;
            const tmp = args.tmp ?? process.env['TMPDIR'] ?? '/tmp';
            await unpackFromTree(produce, { mode: treeMode ?? 'to', to: args.to, json: args.json, paths: args.path, tmp, archiveBytes, out: process.stdout, log: ctx.log, signal: ctx.signal });
            return;
          }
          if (args.to !== undefined) {
            const { replayToDir } = await import('../stages/unpack/replay/to-dir.js');
            await replayToDir(inputs, args.to, { log: ctx.log, signal: ctx.signal, progress, as: args.as });
            return;
          }
          await restoreChain(inputs, {
            lockWait: parseWait(args.wait),
            lxcDir: ctx.dirs.lxcDir,
            as: args.as,
            force: args.force,
            stop: args.stop,
            stopTimeoutS: args.stopTimeout,
            start: args.start,
            log: ctx.log,
            signal: ctx.signal,
            progress,
          });
        } finally {
          ctx.signal.removeEventListener('abort', stopStdin);
          shown.close();
          // A failed or interrupted run may leave a read of stdin pending (a writer that keeps
          // the pipe open): close it, or the process would wait for that writer to finish.
          if (!positional.length) process.stdin.destroy();
        }
      },
    },
    argv,
  );
}
