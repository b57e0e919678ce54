// sbk-snap: container names in, one NDJSON backup record per backup out (snapshots made).
import { runCli, writeOut, WAIT_OPTION, parseWait, type Context } from './common.js';
import { SbkError, ExitCode } from '../core/errors.js';

interface SnapArgs {
  full?: boolean;
  incremental?: boolean;
  all?: boolean;
  wait?: string;
  confirm?: boolean;
  recordName?: boolean;
  receipt?: boolean;
  host?: string;
  path?: string;
  size?: number;
  sha256?: string;
  keepSnapshots?: number;
  maxChain?: number;
  freeze?: boolean;
  stop?: boolean;
  freezeTimeout?: number;
}

/** Default of --freeze-timeout (seconds): the longest a running container stays frozen. */
const DEFAULT_FREEZE_TIMEOUT_S = 5;

/** Default of --keep-snapshots: the confirming stage (sbk-pack, or sbk-snap --confirm) keeps this many. */
const DEFAULT_KEEP_SNAPSHOTS = 2;

export function main(argv: string[]): Promise<void> {
  return runCli<SnapArgs>(
    {
      name: 'sbk-snap',
      usage:
        '$0 [--full|--incremental] [--max-chain N] [--keep-snapshots N] [--no-freeze|--stop] CONTAINER...\n$0 --all\n$0 --confirm [--keep-snapshots N] < receipts\n\nMakes read-only snapshots of every volume of each container and prints one NDJSON backup record per container (pipe it into sbk-changelog or sbk-send). A running container is frozen for the instant of its snapshots (--no-freeze: not; --stop: stopped and started again).\nWith --confirm: reads the receipts of sbk-pack --store and marks those snapshot sets as valid parents.\nWith --record-name or --receipt (for stores that run no sbk, as the encrypted remote backup has them): reads backup records and prints each one\'s backup name, or its receipt for a file stored at --host/--path with --size and --sha256.',
      options: (y) =>
        y
          .option('full', { alias: 'f', type: 'boolean', describe: 'make a Full backup' })
          .option('incremental', { alias: 'i', type: 'boolean', describe: 'fail unless a valid parent exists' })
          .option('all', { alias: 'a', type: 'boolean', describe: 'back up every container in the LXC dir' })
          .option('wait', WAIT_OPTION)
          .option('confirm', {
            type: 'boolean',
            describe: 'read receipts (sbk-pack --store output) on stdin and mark those snapshot sets confirmed',
          })
          .option('record-name', { type: 'boolean', describe: 'read backup records on stdin and print the backup name of each' })
          .option('receipt', {
            type: 'boolean',
            describe: 'read backup records on stdin and print a receipt for each, stored as --path on --host (--size, --sha256)',
          })
          .option('host', { type: 'string', describe: 'with --receipt: the host that stores the file', hidden: true })
          .option('path', { type: 'string', describe: 'with --receipt: the absolute path of the stored file', hidden: true })
          .option('size', { type: 'number', describe: 'with --receipt: its size in bytes', hidden: true })
          .option('sha256', { type: 'string', describe: 'with --receipt: its sha256 (hex)', hidden: true })
          .option('keep-snapshots', {
            type: 'number',
            describe: `after a set is confirmed, keep this many confirmed sets (the newest is the next parent) and remove older ones and sets of failed runs (default ${DEFAULT_KEEP_SNAPSHOTS})`,
          })
          .option('max-chain', {
            type: 'number',
            describe: 'make a Full backup once this many incrementals follow the last Full',
          })
          .option('freeze', {
            type: 'boolean',
            describe: 'freeze a running container for the instant of its snapshots (the default; --freeze fails when it cannot be done); --no-freeze: snapshot it live',
          })
          .option('stop', {
            type: 'boolean',
            describe: 'stop a running container for its snapshots (lxc-stop), then start it again',
          })
          .option('freeze-timeout', {
            type: 'number',
            describe: `the longest a container may stay frozen, in seconds (default ${DEFAULT_FREEZE_TIMEOUT_S}); past it, it is thawed and that backup fails`,
          })
          .conflicts('full', 'incremental')
          .conflicts('stop', 'freeze')
          .conflicts('max-chain', ['incremental', 'full', 'confirm'])
          .conflicts('confirm', ['full', 'incremental', 'all', 'record-name', 'receipt', 'stop'])
          .conflicts('record-name', ['full', 'incremental', 'all', 'receipt', 'max-chain'])
          .conflicts('receipt', ['full', 'incremental', 'all', 'max-chain'])
          .check(checkSnapArgs),
      run: async (args, ctx) => {
        if (args.recordName || args.receipt) return printRecordNamesOrReceipts(args, ctx);
        const runs = await import('../stages/snap/runs.js');
        if (args.confirm) {
          if (args._.length) throw new SbkError('--confirm reads receipts on stdin; it takes no container names', ExitCode.usage);
          if (process.stdin.isTTY)
            throw new SbkError('stdin is a terminal: pipe the receipts of sbk-pack --store into sbk-snap --confirm', ExitCode.usage);
          const { receiptLocation } = await import('../formats/receipt.js');
          const lockWait = parseWait(args.wait);
          return runs.confirmReceipts(ctx.dirs, process.stdin, {
            log: ctx.log,
            signal: ctx.signal,
            keep: args.keepSnapshots,
            defaultKeep: DEFAULT_KEEP_SNAPSHOTS,
            lockWait,
            emit: (r) => writeOut(receiptLocation(r) + '\n'),
          });
        }
        const { formatRecord } = await import('../formats/record.js');
        const lockWait = parseWait(args.wait);
        return runs.snapContainers(ctx.dirs, args._.map(String), {
          all: !!args.all,
          mode: args.full ? 'full' : args.incremental ? 'incremental' : 'auto',
          log: ctx.log,
          signal: ctx.signal,
          lockWait,
          maxChain: args.maxChain,
          keepSnapshots: args.keepSnapshots ?? DEFAULT_KEEP_SNAPSHOTS,
          hold: args.stop ? 'stop' : args.freeze === true ? 'freeze' : args.freeze === false ? 'live' : 'auto',
          freezeTimeoutS: args.freezeTimeout ?? DEFAULT_FREEZE_TIMEOUT_S,
          emit: (r) => writeOut(formatRecord(r)),
        });
      },
    },
    argv,
  );
}

/** The checks of the options that yargs cannot say by itself. */
function checkSnapArgs(a: Record<string, unknown>): true {
  const keep = a.keepSnapshots as number | undefined;
  const max = a.maxChain as number | undefined;
  if (keep !== undefined && (!Number.isInteger(keep) || keep < 1))
    throw new Error('--keep-snapshots takes a whole number from 1 (the newest confirmed set is always kept)');
  if (max !== undefined && (!Number.isInteger(max) || max < 0))
    throw new Error('--max-chain takes a whole number from 0');
  const ft = a.freezeTimeout as number | undefined;
  if (ft !== undefined && (!Number.isFinite(ft) || ft <= 0 || ft > 3600)) throw new Error('--freeze-timeout takes a number of seconds above 0 (at most 3600)');
  if (a.receipt) {
    if (!a.host || !a.path || !String(a.path).startsWith('/')) throw new Error('--receipt needs --host and an absolute --path');
    if (!Number.isSafeInteger(a.size) || (a.size as number) < 0) throw new Error('--receipt needs --size, a whole number of bytes');
    if (!/^[0-9a-f]{64}$/.test(String(a.sha256 ?? ''))) throw new Error('--receipt needs --sha256, 64 hex digits');
  }
  return true;
}

/** --record-name, --receipt: backup records in, each one's backup name (or receipt) out. */
async function printRecordNamesOrReceipts(args: SnapArgs & { _: (string | number)[] }, ctx: Context): Promise<void> {
  if (args._.length) throw new SbkError('--record-name and --receipt read records on stdin; they take no container names', ExitCode.usage);
  if (process.stdin.isTTY) throw new SbkError('stdin is a terminal: pipe backup records (sbk-snap output) in', ExitCode.usage);
  const [{ readRecords }, { formatReceipt, receiptOfRecord }] = await Promise.all([
    import('../formats/record.js'),
    import('../formats/receipt.js'),
  ]);
  const stored = { host: args.host!, path: args.path!, size: args.size!, sha256: args.sha256! };
  let n = 0;
  for await (const r of readRecords(process.stdin)) {
    n++;
    await writeOut(args.receipt ? formatReceipt(receiptOfRecord(r, stored)) : `${r.name}\n`, ctx.signal);
  }
  if (n === 0) throw new SbkError('no input (did the stage before fail?): expected backup records on stdin', ExitCode.badInput);
}
