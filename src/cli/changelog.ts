// sbk-changelog: adds the changelog (paths added, modified, deleted since the previous backup)
// to each backup record passing from sbk-snap to sbk-send. See man/sbk-changelog.1.
import path from 'node:path';
import { lstat } from 'node:fs/promises';
import { runCli, writeOut, type CliSpec, type Context } from './common.js';
import { SbkError, ExitCode, usageError } from '../core/errors.js';
import { readRecords, formatRecord, type BackupRecord } from '../formats/record.js';
import { SET_CHANGELOG } from '../core/layout.js';
import { createAtomicFile, exists } from '../system/atomic.js';
import type { ChangelogLine, ChangelogOptions, Method } from '../stages/changelog/changelog.js';

// The work's modules (execa, the send-stream parser) are loaded for a real run only: --help
// answers without them (see runCli).
let requireSubvolume: typeof import('../system/btrfs.js').requireSubvolume;
let changesBetween: typeof import('../stages/changelog/changelog.js').changesBetween;
let changesFromModel: typeof import('../stages/changelog/changelog.js').changesFromModel;
let modelFromStream: typeof import('../stages/changelog/changelog.js').modelFromStream;
let toLines: typeof import('../stages/changelog/changelog.js').toLines;
let formatChangelog: typeof import('../stages/changelog/changelog.js').formatChangelog;
async function loadWork(): Promise<void> {
  ({ requireSubvolume } = await import('../system/btrfs.js'));
  ({ changesBetween, changesFromModel, modelFromStream, toLines, formatChangelog } = await import('../stages/changelog/changelog.js'));
}

interface Args {
  method: Method;
  allChanges: boolean;
  between?: string[];
  fromStream: boolean;
  mount?: string;
}

async function requireDir(p: string, what: string): Promise<void> {
  let st;
  try {
    st = await lstat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new SbkError(`${what} ${p} does not exist`, ExitCode.notFound);
    throw err;
  }
  if (!st.isDirectory()) throw new SbkError(`${what} ${p} is not a directory`, ExitCode.badInput);
}

/** Checks a snapshot argument for the method: the stream method needs BTRFS subvolumes. */
async function requireSnapshot(method: Method, p: string, what: string): Promise<void> {
  if (method === 'stream') await requireSubvolume(p, what);
  else await requireDir(p, what);
}

async function writeChangelogFile(file: string, text: string): Promise<void> {
  const f = await createAtomicFile(file);
  try {
    await new Promise<void>((resolve, reject) => {
      f.stream.once('error', reject);
      f.stream.end(text, () => resolve());
    });
    await f.commit();
  } catch (err) {
    await f.abort();
    throw err;
  }
}

/**
 * The changelog lines of one record: every volume against the same volume of `previous`; with no
 * previous backup (a first Full), every path of every volume as added, so that the changelogs
 * together name every backup that touched a path.
 */
async function recordChangelog(r: BackupRecord, args: Args, ctx: Context, opts: ChangelogOptions): Promise<ChangelogLine[]> {
  const prev = r.previous;
  if (prev && !(await exists(prev.set)))
    throw new SbkError(`${r.name}: the previous snapshot set ${prev.set} does not exist`, ExitCode.notFound);
  const lines: ChangelogLine[] = [];
  for (const vol of r.volumes) {
    const old = prev ? path.join(prev.set, vol.name) : null;
    const hasOld = old !== null && (await exists(old));
    if (hasOld) await requireSnapshot(args.method, old, 'previous snapshot');
    await requireSnapshot(args.method, vol.snapshot, 'snapshot');
    ctx.log.verbose(`${r.name}: ${vol.name}: ${hasOld ? `changes since ${prev!.name}` : prev ? `new volume, every path added` : `first backup, every path added`} (${args.method})`);
    const changes = await changesBetween(args.method, hasOld ? old : null, vol.snapshot, opts);
    lines.push(...toLines(changes, vol.mount));
  }
  return lines;
}

async function runFilter(args: Args, ctx: Context, opts: ChangelogOptions): Promise<void> {
  if (process.stdin.isTTY)
    throw usageError('stdin is a terminal: pipe backup records into sbk-changelog (sbk-snap c1 | sbk-changelog | …)');
  let count = 0;
  for await (const r of readRecords(process.stdin)) {
    if (ctx.signal.aborted) throw ctx.signal.reason;
    count++;
    const lines = await recordChangelog(r, args, ctx, opts);
    const file = path.join(r.set, SET_CHANGELOG);
    await writeChangelogFile(file, formatChangelog(lines));
    r.changelog = file;
    ctx.log.info(`${r.name}: ${lines.length} change(s) since ${r.previous ? r.previous.name : 'nothing (first backup: every path added)'}`);
    await writeOut(formatRecord(r));
  }
  // Nothing at all: sbk-snap failed (its message says why). Still a failure, so that a plain
  // `sh` pipe (no pipefail) does not end in success.
  if (count === 0) throw new SbkError('no input (did the stage before fail?): expected backup records (sbk-snap output) on stdin', ExitCode.badInput);
}

async function runBetween(args: Args, ctx: Context, opts: ChangelogOptions): Promise<void> {
  const [oldSnap, newSnap] = args.between!.map((p) => path.resolve(p));
  await requireSnapshot(args.method, oldSnap!, 'old snapshot');
  await requireSnapshot(args.method, newSnap!, 'new snapshot');
  const changes = await changesBetween(args.method, oldSnap!, newSnap!, opts);
  await writeOut(formatChangelog(toLines(changes, args.mount ?? '/')));
}

async function runFromStream(args: Args, _ctx: Context, opts: ChangelogOptions): Promise<void> {
  if (process.stdin.isTTY) throw usageError('stdin is a terminal: pipe a btrfs send stream in (btrfs send … | sbk-changelog --from-stream)');
  const model = await modelFromStream(process.stdin);
  const changes = await changesFromModel(model, undefined, opts);
  await writeOut(formatChangelog(toLines(changes, args.mount ?? '/')));
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
    run: async (args, ctx) => {
      await loadWork();
      const opts: ChangelogOptions = { allChanges: args.allChanges, signal: ctx.signal, warn: (m) => ctx.log.warn(m) };
      if (args.between || args.fromStream) {
        // A listing: a reader that stops early (`| head`) is not an error.
        spec.brokenPipeIsOk = true;
        return args.between ? runBetween(args, ctx, opts) : runFromStream(args, ctx, opts);
      }
      return runFilter(args, ctx, opts);
    },
  };
  return runCli(spec, argv);
}
