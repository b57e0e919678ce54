// sbk-pack: the tar stream of sbk-send in, gzip or zstd archives stored atomically (or -o FILE / -o -, or
// --store DIR or s3://BUCKET/PREFIX for archives sent from elsewhere).
import { runCli, refuseBinaryToTerminal, writeOut, makeProgress, PROGRESS_OPTION, S3_ENDPOINT_OPTION, S3_CA_OPTION, type Context } from './common.js';
import { SbkError, ExitCode } from '../core/errors.js';
import type { Meter } from '../core/progress.js';
import type { CompressionOptions } from '../stages/pack/pack.js';
import { CODEC_INFO, DEFAULT_CODEC_NAME } from '../formats/codecs/names.js';

const codecs = Object.values(CODEC_INFO);

interface PackArgs {
  output?: string;
  store?: string;
  compress: string;
  level?: number;
  s3Endpoint?: string;
  s3Ca?: string;
  threads?: number;
  progress?: boolean;
}

export function main(argv: string[]): Promise<void> {
  return runCli<PackArgs>(
    {
      name: 'sbk-pack',
      usage:
        '$0 [options] < backups.tar\n$0 --store DIR < backups.tar.gz\n\nCompresses each sbk archive of the input, checks it against its trailer, and stores it as <backup-dir>/<c>_<time>[_Full].tar.gz (.tar.zst with --compress zstd) (temp name, fsync, rename), with the changelog sidecar; then marks its snapshot set as a valid parent. Prints each stored path.\nWith --store DIR (the receiving end of a remote backup): stores the archives of `sbk-pack -o -` (kept byte for byte) or of sbk-send in DIR, confirms nothing, and prints one receipt per stored archive (NDJSON) for sbk-snap --confirm.',
      options: (y) =>
        y
          .option('output', {
            alias: 'o',
            type: 'string',
            describe: 'write the one archive to FILE, or all archives to stdout with -o - (no confirmation)',
          })
          .option('store', {
            type: 'string',
            describe: 'store the archives of sbk-pack -o - (or sbk-send) in DIR and print a receipt for each (needs no BTRFS, no root)',
          })
          .conflicts('store', 'output')
          .option('compress', {
            alias: 'c',
            type: 'string',
            default: DEFAULT_CODEC_NAME,
            describe: `compression of the archives: ${codecs.map((c) => `${c.name} (${c.suffix})`).join(', ')}`,
          })
          .option('level', {
            alias: 'l',
            type: 'number',
            describe: `compression level: ${codecs.map((c) => `${c.name} ${c.levels.min}..${c.levels.max} (default ${c.levels.default})`).join(', ')}`,
          })
          .option('s3-endpoint', S3_ENDPOINT_OPTION)
          .option('s3-ca', S3_CA_OPTION)
          .option('threads', {
            alias: 'T',
            type: 'number',
            describe:
              'compression threads (gzip default: cores + 1, at most UV_THREADPOOL_SIZE - 1, bin/sbk-pack sets that to cores + 3; zstd default: cores)',
          })
          .option('progress', PROGRESS_OPTION)
          .check((a) => {
            const codec = codecs.find((c) => c.name === a.compress);
            if (!codec) throw new Error(`--compress takes ${codecs.map((c) => c.name).join(' or ')}, not ${JSON.stringify(a.compress)}`);
            const { min, max } = codec.levels;
            if (a.level !== undefined && (!Number.isInteger(a.level) || a.level < min || a.level > max))
              throw new Error(`--level takes ${min}..${max} for ${codec.name}, not ${String(a.level)}`);
            if (a.threads !== undefined && (!Number.isInteger(a.threads) || a.threads < 1 || a.threads > 256))
              throw new Error('--threads takes a whole number from 1');
            return true;
          }),
      run: (args, ctx) => (args.store !== undefined ? runStore(args, ctx, args.store) : runPack(args, ctx)),
    },
    argv,
  );
}

/**
 * How archives are compressed, with a progress meter per archive: bytes in and out, ratio, rate
 * (read from the compressor's counters), closed once the archive is stored.
 */
async function compression(args: PackArgs, ctx: Context): Promise<CompressionOptions> {
  const progress = await makeProgress(ctx, args.progress);
  let meter: Meter | undefined;
  return {
    codec: args.compress,
    level: args.level,
    threads: args.threads,
    progress: progress.enabled
      ? {
          start: ({ manifest, counters }) => {
            const m = (meter = progress.start(manifest.name));
            m.out = 0;
            m.sample = () => {
              m.bytes = counters.bytesIn;
              m.out = counters.bytesOut;
            };
          },
          end: () => {
            if (meter) progress.finish(meter);
            meter = undefined;
          },
        }
      : undefined,
  };
}

/** --store DIR|s3://…: archives of `sbk-pack -o -` (or sbk-send) in, one receipt per stored archive out. */
async function runStore(args: PackArgs, ctx: Context, location: string): Promise<void> {
  if (location === '') throw new SbkError('--store needs a directory or an s3://BUCKET/PREFIX', ExitCode.usage);
  if (process.stdin.isTTY) throw new SbkError('stdin is a terminal: pipe the output of sbk-pack -o - into sbk-pack --store', ExitCode.usage);
  const [{ storeArchives }, { formatReceipt, receiptFor }, { openStore, isS3Url }, { mkdir }] = await Promise.all([
    import('../stages/pack/store.js'),
    import('../formats/receipt.js'),
    import('../system/store.js'),
    import('node:fs/promises'),
  ]);
  const compress = await compression(args, ctx);
  if (!isS3Url(location)) await mkdir(location, { recursive: true });
  const store = await openStore(location, { endpoint: args.s3Endpoint, ca: args.s3Ca });
  const stored = await storeArchives(process.stdin, {
    ...compress,
    store,
    log: ctx.log,
    signal: ctx.signal,
    // The receipt goes out only once the archive is under its final name, fsynced.
    onStored: (a) => writeOut(formatReceipt(receiptFor(a))),
  });
  if (stored.length === 0) throw new SbkError('the input held no archive', ExitCode.badInput);
}

/** Archives of sbk-send in: stored in the backup directory (and confirmed), or to -o FILE / -o -. */
async function runPack(args: PackArgs, ctx: Context): Promise<number | void> {
  const target =
    args.output === '-'
      ? ({ kind: 'stdout' } as const)
      : args.output !== undefined
        ? ({ kind: 'file', path: args.output } as const)
        : ({ kind: 'store', dirs: ctx.dirs } as const);
  if (target.kind === 'stdout') refuseBinaryToTerminal('sbk-pack', `${args.compress} data`);
  if (process.stdin.isTTY) throw new SbkError('stdin is a terminal: pipe the output of sbk-send into sbk-pack', ExitCode.usage);
  const [{ packArchives }, { mkdir }] = await Promise.all([import('../stages/pack/pack.js'), import('node:fs/promises')]);
  const compress = await compression(args, ctx);
  if (target.kind === 'store') await mkdir(ctx.dirs.backupDir, { recursive: true });
  let pruneFailed = false;
  const stored = await packArchives(process.stdin, {
    ...compress,
    onPruneError: () => {
      pruneFailed = true;
    },
    target,
    log: ctx.log,
    signal: ctx.signal,
    onStored: async (a) => {
      ctx.log.verbose(`${a.name}: ${a.path === '-' ? 'written to stdout' : `stored ${a.path}`} (${a.size} bytes, sha256 ${a.sha256})`);
      if (target.kind !== 'stdout') await writeOut(a.path + '\n');
    },
  });
  if (stored.length === 0) throw new SbkError('the input held no archive', ExitCode.badInput);
  // Every archive is stored and confirmed; only removing old snapshot sets failed.
  if (pruneFailed) return ExitCode.failure;
}
