// sbk-unpack: archives in (paths, a list of paths on stdin, or archive bytes on stdin), a
// restored container out, at <lxc-dir>/<name>. --verify checks archives without restoring.
import path from 'node:path';
import { stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { runCli, WAIT_OPTION, parseWait, makeProgress, PROGRESS_OPTION } from './common.js';
import { SbkError, ExitCode, describeSystemError } from '../core/errors.js';
import type { RestoreInput, RestoreProgress } from '../stages/unpack/input.js';
import type { Meter, Progress } from '../core/progress.js';

interface UnpackArgs {
  as?: string;
  force?: boolean;
  verify?: boolean;
  to?: string;
  wait?: string;
  progress?: boolean;
}

const MAX_LIST = 1024 * 1024;

async function fileInputs(paths: string[]): Promise<RestoreInput[]> {
  const { openArchiveFile } = await import('../formats/archive/open.js');
  const { parseArchiveName } = await import('../core/layout.js');
  const inputs: RestoreInput[] = [];
  for (const p of paths) {
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
    inputs.push({ source: abs, open: () => openArchiveFile(abs), nameInfo: parseArchiveName(abs), size: st.size });
  }
  return inputs;
}

/** Stdin holds either archive bytes (gzip or tar) or a list of paths, one a line: the first bytes tell. */
async function stdinInputs(): Promise<{ inputs: RestoreInput[]; files: boolean }> {
  const { peekStream, sniff, describeKind } = await import('../formats/input.js');
  const { openArchiveStream } = await import('../formats/archive/open.js');
  if (process.stdin.isTTY)
    throw new SbkError('no archives: give their paths, or pipe `sbk-plan CONTAINER` or archive bytes into stdin', ExitCode.usage);
  const { head, stream } = await peekStream(process.stdin, 512);
  const kind = sniff(head);
  if (kind === 'gzip' || kind === 'tar')
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
  return { inputs: await fileInputs(paths), files: true };
}

/** Per volume: bytes, rate, elapsed, and for an archive file how far through it the read is. */
function restoreProgress(progress: Progress, formatBytes: (n: number) => string): RestoreProgress {
  let meter: Meter | undefined;
  return {
    volume(archive, volume, input, tarStream) {
      const m = (meter = progress.start(`${archive} ${volume}`));
      const size = input.size;
      // A gzip archive's stream is the gunzip one: bytesWritten is the compressed bytes consumed.
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

export function main(argv: string[]): Promise<void> {
  return runCli<UnpackArgs>(
    {
      name: 'sbk-unpack',
      usage:
        '$0 [--as NAME] [--force] [ARCHIVE...]\n$0 --to DIR [ARCHIVE...]\n$0 --verify [ARCHIVE...]\n\nRestores a chain of archives (the Full first) as a container in the LXC dir, or with --to replays it into a new directory on any filesystem (no BTRFS, no root). Archives are named as arguments, listed on stdin one path a line (sbk-plan output), or piped in as bytes (cat a.tar.gz b.tar.gz | sbk-unpack).',
      options: (y) =>
        y
          .option('as', { type: 'string', describe: 'restore under this container name (default: the archived name)' })
          .option('force', { alias: 'f', type: 'boolean', describe: 'replace an existing container, once the new one is complete' })
          .option('wait', WAIT_OPTION)
          .option('verify', { type: 'boolean', describe: 'check archives fully (gzip, tar, sha256, send streams); restore nothing, needs no root' })
          .option('to', { type: 'string', describe: 'replay the chain into DIR (new or empty) on any filesystem: DIR/<volume>/... and the meta files; needs neither BTRFS nor root' })
          .option('progress', PROGRESS_OPTION)
          .conflicts('verify', ['as', 'force', 'to'])
          .conflicts('to', ['force', 'wait']),
      run: async (args, ctx) => {
        const { restoreChain } = await import('../stages/unpack/restore.js');
        const { verifyInputs } = await import('../stages/unpack/verify.js');
        const { precheckFiles } = await import('../stages/unpack/input.js');
        const { checkContainerName } = await import('../core/layout.js');
        if (args.as !== undefined) checkContainerName(args.as, '--as name');
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
          const { inputs, files } = positional.length
            ? { inputs: await fileInputs(positional), files: true }
            : await stdinInputs();
          if (args.verify) {
            await verifyInputs(inputs, { log: ctx.log, signal: ctx.signal, progress });
            return;
          }
          if (files) await precheckFiles(inputs, args.as);
          if (args.to !== undefined) {
            if (args.to === '') throw new SbkError('--to needs a directory', ExitCode.usage);
            const { replayToDir } = await import('../stages/unpack/replay/to-dir.js');
            await replayToDir(inputs, args.to, { log: ctx.log, signal: ctx.signal, progress, as: args.as });
            return;
          }
          await restoreChain(inputs, {
            lockWait: parseWait(args.wait),
            lxcDir: ctx.dirs.lxcDir,
            as: args.as,
            force: args.force,
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
