// sbk-pack: the tar stream of sbk-send in, gzip archives stored atomically (or -o FILE / -o -).
import { runCli, refuseBinaryToTerminal, writeOut } from './common.js';
import { SbkError, ExitCode } from '../lib/errors.js';

interface PackArgs {
  output?: string;
  level: number;
  threads?: number;
}

export function main(argv: string[]): Promise<void> {
  return runCli<PackArgs>(
    {
      name: 'sbk-pack',
      usage:
        '$0 [options] < backups.tar\n\nCompresses each sbk archive of the input, checks it against its trailer, and stores it as <backup-dir>/<c>_<time>[_Full].tar.gz (temp name, fsync, rename), with the changelog sidecar; then marks its snapshot set as a valid parent. Prints each stored path.',
      options: (y) =>
        y
          .option('output', {
            alias: 'o',
            type: 'string',
            describe: 'write the one archive to FILE, or all archives to stdout with -o - (no confirmation)',
          })
          .option('level', { alias: 'l', type: 'number', default: 6, describe: 'gzip level 1..9' })
          .option('threads', { alias: 'T', type: 'number', describe: 'compression threads (default: number of cores)' })
          .check((a) => {
            if (!Number.isInteger(a.level) || a.level < 1 || a.level > 9) throw new Error('--level takes 1..9');
            if (a.threads !== undefined && (!Number.isInteger(a.threads) || a.threads < 1 || a.threads > 256))
              throw new Error('--threads takes a whole number from 1');
            return true;
          }),
      run: async (args, ctx) => {
        const [{ packArchives }, { createGzipCompressor }] = await Promise.all([
          import('../lib/store.js'),
          import('../lib/compression.js'),
        ]);
        const target =
          args.output === '-'
            ? ({ kind: 'stdout' } as const)
            : args.output !== undefined
              ? ({ kind: 'file', path: args.output } as const)
              : ({ kind: 'store', dirs: ctx.dirs } as const);
        if (target.kind === 'stdout') refuseBinaryToTerminal('sbk-pack', 'gzip data');
        if (process.stdin.isTTY)
          throw new SbkError('stdin is a terminal: pipe the output of sbk-send into sbk-pack', ExitCode.usage);
        if (target.kind === 'store') {
          const { mkdir } = await import('node:fs/promises');
          await mkdir(ctx.dirs.backupDir, { recursive: true });
        }
        const stored = await packArchives(process.stdin, {
          target,
          level: args.level,
          threads: args.threads,
          log: ctx.log,
          signal: ctx.signal,
          compressor: (level, threads) => createGzipCompressor({ level, threads }),
          onStored: async (a) => {
            ctx.log.verbose(`${a.name}: stored ${a.path} (${a.size} bytes, sha256 ${a.sha256})`);
            if (target.kind !== 'stdout') await writeOut(a.path + '\n');
          },
        });
        if (stored.length === 0) throw new SbkError('the input held no archive', ExitCode.badInput);
      },
    },
    argv,
  );
}
