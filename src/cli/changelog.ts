// sbk-changelog: adds the changelog (paths added, modified, deleted since the previous backup)
// to each backup record passing from sbk-snap to sbk-send. See man/sbk-changelog.1.
import path from 'node:path';
import { runCli, writeOut, type CliSpec, type Context } from './common.js';
import { usageError } from '../core/errors.js';
import { formatRecord } from '../formats/record.js';
import type { ChangelogOptions, Method } from '../stages/changelog/changelog.js';

interface Args {
  method: Method;
  allChanges: boolean;
  between?: string[];
  fromStream: boolean;
  mount?: string;
}

// The work's modules (execa, the send-stream parser) are loaded for a real run only: --help
// answers without them (see runCli).
async function run(args: Args, ctx: Context, spec: CliSpec<Args>): Promise<void> {
  const work = await import('../stages/changelog/records.js');
  const opts: ChangelogOptions = { allChanges: args.allChanges, signal: ctx.signal, warn: (m) => ctx.log.warn(m) };
  if (args.between) {
    // A listing: a reader that stops early (`| head`) is not an error.
    spec.brokenPipeIsOk = true;
    const [oldSnap, newSnap] = args.between.map((p) => path.resolve(p));
    return writeOut(await work.changelogBetween(args.method, oldSnap!, newSnap!, args.mount ?? '/', opts));
  }
  if (args.fromStream) {
    spec.brokenPipeIsOk = true;
    if (process.stdin.isTTY) throw usageError('stdin is a terminal: pipe a btrfs send stream in (btrfs send … | sbk-changelog --from-stream)');
    return writeOut(await work.changelogOfStream(process.stdin, args.mount ?? '/', opts));
  }
  if (process.stdin.isTTY)
    throw usageError('stdin is a terminal: pipe backup records into sbk-changelog (sbk-snap c1 | sbk-changelog | …)');
  await work.addChangelogs(process.stdin, { ...opts, method: args.method, log: ctx.log, emit: (r) => writeOut(formatRecord(r)) });
}

export function main(argv: string[]): Promise<void> {
  const spec: CliSpec<Args> = {
    name: 'sbk-changelog',
    usage: [
      '$0 [--method stream|rsync] [--all-changes]',
      "    backup records on stdin: writes each backup's changelog, passes the records on",
      '$0 --between OLD_SNAPSHOT NEW_SNAPSHOT [--mount DIR] [--method stream|rsync]',
      '    prints the changes between two snapshots',
      '$0 --from-stream [--mount DIR] < STREAM',
      '    prints the changes a btrfs send stream makes',
    ].join('\n'),
    options: (y) =>
      y
        .option('method', {
          choices: ['stream', 'rsync'] as const,
          default: 'stream' as const,
          describe: 'stream: parse `btrfs send --no-data -p`; rsync: an rsync dry run',
        })
        .option('all-changes', {
          type: 'boolean',
          default: false,
          describe: 'also list permission, owner, group and xattr/ACL-only changes (as modified)',
        })
        .option('between', {
          type: 'string',
          array: true,
          nargs: 2,
          describe: 'print the changes from OLD_SNAPSHOT to NEW_SNAPSHOT on stdout',
        })
        .option('from-stream', {
          type: 'boolean',
          default: false,
          describe: 'read a btrfs send stream (full or incremental, with or without data) on stdin',
        })
        .option('mount', {
          type: 'string',
          describe: 'mount point of the volume inside the container, prefixed to the paths (default /)',
        })
        .check((a) => {
          if (a._.length) throw new Error(`unexpected argument: ${a._[0]}`);
          const between = a.between as string[] | undefined;
          if (between && between.length !== 2) throw new Error('--between takes two snapshots: OLD NEW');
          if (between && a.fromStream) throw new Error('--between and --from-stream exclude each other');
          if (a.fromStream && a.method === 'rsync') throw new Error('--from-stream reads a send stream: --method rsync does not apply');
          if (a.mount !== undefined && !between && !a.fromStream)
            throw new Error('--mount applies to --between and --from-stream (records carry their mount points)');
          if (a.mount !== undefined && !a.mount.startsWith('/')) throw new Error('--mount must be an absolute path, like /var');
          return true;
        }) as never,
    run: (args, ctx) => run(args, ctx, spec),
  };
  return runCli(spec, argv);
}
