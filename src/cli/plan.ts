// sbk-plan: a container name in, the archives that restore one of its backups out (one path per
// line, oldest first: the input of sbk-unpack). --list shows every backup and its chain.
import { runCli, writeOut, WAIT_OPTION, parseWait, S3_ENDPOINT_OPTION, S3_CA_OPTION } from './common.js';
import { SbkError, ExitCode } from '../core/errors.js';
import type { Log } from '../core/log.js';
import type { ArchiveFile, Plan } from '../stages/plan/chain.js';

interface PlanArgs {
  at?: string;
  dir?: string;
  list?: boolean;
  json?: boolean;
  prune?: boolean;
  keepLast?: number;
  keepDaily?: number;
  keepWeekly?: number;
  keepMonthly?: number;
  delete?: boolean;
  wait?: string;
  names?: boolean;
  head?: boolean;
  s3Endpoint?: string;
  s3Ca?: string;
}

export function main(argv: string[]): Promise<void> {
  return runCli<PlanArgs>(
    {
      name: 'sbk-plan',
      usage:
        '$0 CONTAINER [--at TIME] [--dir DIR|s3://BUCKET/PREFIX]\n$0 CONTAINER --list [--json]\n$0 CONTAINER --prune --keep-last N|--keep-daily N|--keep-weekly N|--keep-monthly N [--delete]\n$0 CONTAINER --names [--at TIME] < LISTING\n$0 --head < ARCHIVE\n\nPrints the archives that restore the newest backup of CONTAINER at or before TIME (default: the latest), one path per line, the Full first: pipe them into sbk-unpack. Archives are linked by the parent their manifests record.\nWith --prune: prints the archives (and changelog sidecars) that the --keep-* policy lets go, never one that a kept backup\'s chain needs; --delete removes them.',
      options: (y) =>
        y
          .option('at', { type: 'string', describe: 'restore point: unix seconds or ISO 8601 (2024-05-01T12:00:00Z; no zone = local time)' })
          .option('dir', { alias: 'd', type: 'string', describe: 'read archives from DIR or s3://BUCKET/PREFIX (default: the backup dir)' })
          .option('list', { alias: 'l', type: 'boolean', describe: 'list every backup of CONTAINER with its chain state' })
          .option('json', { type: 'boolean', describe: 'NDJSON output, one object per line' })
          .option('prune', { type: 'boolean', describe: 'print the archives the --keep-* policy lets go (never one a kept chain needs)' })
          .option('keep-last', { type: 'number', describe: 'with --prune: keep the N newest backups' })
          .option('keep-daily', { type: 'number', describe: 'with --prune: keep the newest backup of each of the last N days that have one' })
          .option('keep-weekly', { type: 'number', describe: 'with --prune: the same per ISO week' })
          .option('keep-monthly', { type: 'number', describe: 'with --prune: the same per month' })
          .option('delete', { type: 'boolean', describe: 'with --prune: remove them (under the container lock)' })
          .option('wait', WAIT_OPTION)
          .option('s3-endpoint', S3_ENDPOINT_OPTION)
          .option('s3-ca', S3_CA_OPTION)
          .option('names', {
            type: 'boolean',
            describe: 'read archive file names on stdin (as ls -1 prints them); print the backups of CONTAINER among them at or before --at, oldest first',
          })
          .option('head', { type: 'boolean', describe: 'read an archive on stdin; print its backup name and parent (- for a Full) from its first bytes' })
          .conflicts('prune', ['at', 'list'])
          .conflicts('names', ['list', 'prune', 'dir', 'json'])
          .conflicts('head', ['at', 'list', 'prune', 'names', 'dir', 'json'])
          .check((a) => {
            const keeps = ['keepLast', 'keepDaily', 'keepWeekly', 'keepMonthly'] as const;
            for (const k of keeps) {
              const v = a[k] as number | undefined;
              if (v === undefined) continue;
              const flag = '--' + k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
              if (!a.prune) throw new Error(`${flag} goes with --prune`);
              if (!Number.isInteger(v) || v < 0) throw new Error(`${flag} takes a whole number from 0`);
            }
            if (a.delete && !a.prune) throw new Error('--delete goes with --prune');
            return true;
          }),
      // A listing read by `| head` is fine; a --delete cut short by a vanished reader is not.
      brokenPipeIsOk: !argv.includes('--delete'),
      run: async (args, ctx) => {
        const { scanStore, planRestore, parseAtTime } = await import('../stages/plan/chain.js');
        const { checkContainerName } = await import('../core/layout.js');
        const names = args._.map(String);
        if (args.head) {
          if (names.length) throw new SbkError('--head reads an archive on stdin and takes no container', ExitCode.usage);
          const { headOf } = await import('../stages/plan/remote.js');
          return writeOut((await headOf(process.stdin)) + '\n');
        }
        if (names.length !== 1)
          throw new SbkError(names.length ? `one container at a time (got ${names.join(', ')})` : 'no container given', ExitCode.usage);
        const container = checkContainerName(names[0]!);
        if (args.list && args.at !== undefined) throw new SbkError('--at and --list do not go together', ExitCode.usage);
        const at = args.at === undefined ? undefined : parseAtTime(args.at);
        if (args.names) {
          const { namesIn } = await import('../stages/plan/remote.js');
          for (const n of await namesIn(process.stdin, container, at)) await writeOut(n + '\n');
          return;
        }
        const { openStore } = await import('../system/store.js');
        const store = await openStore(args.dir ?? ctx.dirs.backupDir, { endpoint: args.s3Endpoint, ca: args.s3Ca });
        const dir = store.location;
        if (args.prune) {
          const { prune, policyIsEmpty } = await import('../stages/plan/prune.js');
          const policy = { last: args.keepLast, daily: args.keepDaily, weekly: args.keepWeekly, monthly: args.keepMonthly };
          if (policyIsEmpty(policy))
            throw new SbkError('--prune needs a policy: --keep-last, --keep-daily, --keep-weekly or --keep-monthly (at least one above 0)', ExitCode.usage);
          return prune(container, store, policy, {
            json: args.json,
            delete: args.delete,
            wait: parseWait(args.wait),
            signal: ctx.signal,
            log: ctx.log,
            emit: (line) => writeOut(line + '\n'),
          });
        }
        const all = await scanStore(store, container, { warn: (m) => ctx.log.warn(m) });
        if (args.list) return printList(all, container, dir, args.json);
        return printChain(planRestore(all, container, dir, at), args.json, ctx.log);
      },
    },
    argv,
  );
}

/** --list: every backup of the container with its chain, as a table (human units on a terminal) or NDJSON. */
async function printList(all: ArchiveFile[], container: string, dir: string, json: boolean | undefined): Promise<void> {
  const { listRows, listTable } = await import('../stages/plan/chain.js');
  const rows = listRows(all.filter((a) => !(a.manifest && a.problem)));
  if (rows.length === 0) throw new SbkError(`no backup of ${container} in ${dir}`, ExitCode.notFound);
  if (json) {
    for (const r of rows) await writeOut(JSON.stringify(r) + '\n');
    return;
  }
  // Human units on a terminal; exact bytes for scripts.
  const { formatBytes } = await import('../core/progress.js');
  for (const line of listTable(rows, process.stdout.isTTY ? formatBytes : String)) await writeOut(line + '\n');
}

/** The chain that restores the planned point: one path a line (or NDJSON), the Full first. */
async function printChain(plan: Plan, json: boolean | undefined, log: Log): Promise<void> {
  if (plan.chain.some((a) => a.legacy))
    log.warn(`the chain holds archives of the original Subutai tool, linked by name order only; they carry no checksums`);
  log.verbose(`${plan.target.name}: ${plan.chain.length} archive${plan.chain.length === 1 ? '' : 's'}`);
  for (const a of plan.chain) {
    if (json)
      await writeOut(JSON.stringify({ path: a.path, name: a.name, time: a.time, kind: a.full ? 'full' : 'incremental', legacy: a.legacy, size: a.size }) + '\n');
    else await writeOut(a.path + '\n');
  }
}
