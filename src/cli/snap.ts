// sbk-snap: container names in, one NDJSON backup record per backup out (snapshots made).
import { runCli, writeOut, WAIT_OPTION, parseWait } from './common.js';
import { SbkError, ExitCode } from '../core/errors.js';

interface SnapArgs {
  full?: boolean;
  incremental?: boolean;
  all?: boolean;
  wait?: string;
  confirm?: boolean;
  keepSnapshots?: number;
  maxChain?: number;
}

/** Default of --keep-snapshots: the confirming stage (sbk-pack, or sbk-snap --confirm) keeps this many. */
const DEFAULT_KEEP_SNAPSHOTS = 2;

/**
 * `--confirm`: receipts in (sbk-pack --store output), snapshot sets confirmed. Each set is
 * confirmed as its receipt arrives. A receipt for a set that is not here, or whose snapshots are
 * not the ones the archive was sent from, is an error (named, the others go on); malformed input
 * stops at its line (exit 3).
 */
async function confirmReceipts(args: SnapArgs, ctx: import('./common.js').Context): Promise<number | void> {
  const { readReceipts, receiptLocation } = await import('../formats/receipt.js');
  const { confirmFromReceipt } = await import('../stages/snap/sets.js');
  if (process.stdin.isTTY)
    throw new SbkError('stdin is a terminal: pipe the receipts of sbk-pack --store into sbk-snap --confirm', ExitCode.usage);
  const lockWait = parseWait(args.wait);
  let count = 0;
  const failures: SbkError[] = [];
  for await (const { receipt } of readReceipts(process.stdin)) {
    ctx.signal.throwIfAborted();
    count++;
    try {
      const r = await confirmFromReceipt(ctx.dirs, receipt, {
        log: ctx.log,
        keep: args.keepSnapshots,
        defaultKeep: DEFAULT_KEEP_SNAPSHOTS,
        lockWait,
        signal: ctx.signal,
      });
      ctx.log.verbose(`${receipt.name}: ${r.already ? 'was already confirmed' : 'confirmed'} (${r.set})`);
      if (r.pruneError) {
        ctx.log.error(r.pruneError.message);
        failures.push(r.pruneError instanceof SbkError ? r.pruneError : new SbkError(String(r.pruneError), ExitCode.failure));
      }
      await writeOut(receiptLocation(receipt) + '\n');
    } catch (err) {
      if (ctx.signal.aborted || !(err instanceof SbkError)) throw err;
      ctx.log.error(err.message);
      failures.push(err);
    }
  }
  // Nothing at all: the stages before failed (their message says why); a plain `sh` pipe,
  // whose status is this stage's, must fail too.
  if (count === 0) throw new SbkError('no input (did the stage before fail?): no receipts on stdin: nothing confirmed', ExitCode.badInput);
  if (failures.length) {
    const codes = new Set(failures.map((f) => f.exitCode));
    return codes.size === 1 ? failures[0]!.exitCode : ExitCode.failure;
  }
}

export function main(argv: string[]): Promise<void> {
  return runCli<SnapArgs>(
    {
      name: 'sbk-snap',
      usage:
        '$0 [--full|--incremental] [--max-chain N] [--keep-snapshots N] CONTAINER...\n$0 --all\n$0 --confirm [--keep-snapshots N] < receipts\n\nMakes read-only snapshots of every volume of each container and prints one NDJSON backup record per container (pipe it into sbk-changelog or sbk-send).\nWith --confirm: reads the receipts of sbk-pack --store and marks those snapshot sets as valid parents.',
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
          .option('keep-snapshots', {
            type: 'number',
            describe: `after a set is confirmed, keep this many confirmed sets (the newest is the next parent) and remove older ones and sets of failed runs (default ${DEFAULT_KEEP_SNAPSHOTS})`,
          })
          .option('max-chain', {
            type: 'number',
            describe: 'make a Full backup once this many incrementals follow the last Full',
          })
          .conflicts('full', 'incremental')
          .conflicts('max-chain', ['incremental', 'full', 'confirm'])
          .conflicts('confirm', ['full', 'incremental', 'all'])
          .check((a) => {
            const keep = a.keepSnapshots as number | undefined;
            const max = a.maxChain as number | undefined;
            if (keep !== undefined && (!Number.isInteger(keep) || keep < 1))
              throw new Error('--keep-snapshots takes a whole number from 1 (the newest confirmed set is always kept)');
            if (max !== undefined && (!Number.isInteger(max) || max < 0))
              throw new Error('--max-chain takes a whole number from 0');
            return true;
          }),
      run: async (args, ctx) => {
        if (args.confirm) {
          if (args._.length) throw new SbkError('--confirm reads receipts on stdin; it takes no container names', ExitCode.usage);
          return confirmReceipts(args, ctx);
        }
        const [{ makeBackupSet }, { findContainers }] = await Promise.all([import('../stages/snap/sets.js'), import('../system/lxc.js')]);
        const { formatRecord } = await import('../formats/record.js');
        const { checkContainerName } = await import('../core/layout.js');
        let names = args._.map(String);
        // One container failing does not stop the others; the exit code still reports it.
        let failed: SbkError | undefined;
        if (args.all) {
          if (names.length) throw new SbkError('give container names or --all, not both', ExitCode.usage);
          const found = await findContainers(ctx.dirs, ctx.log);
          // Said before any backup starts, one line each: a container --all found but cannot back
          // up is an error (exit 1 at the end), never a silent gap in a cron job's backups.
          for (const u of found.unusable) {
            ctx.log.error(`${u.name}: not backed up: ${u.error.message}`);
            failed = u.error;
          }
          names = found.names;
          if (!names.length && !found.unusable.length) throw new SbkError(`no containers found in ${ctx.dirs.lxcDir}`, ExitCode.notFound);
          if (!names.length) return ExitCode.failure;
        }
        if (!names.length) throw new SbkError('no container given (or use --all)', ExitCode.usage);
        for (const n of names) checkContainerName(n);
        // A name given twice is one backup: a second set of the same container in the same run
        // would only be an incremental on nothing new, and its parent is not confirmed yet.
        const unique = [...new Set(names)];
        for (const n of unique)
          if (names.indexOf(n) !== names.lastIndexOf(n)) ctx.log.warn(`${n} is named more than once: backed up once`);
        names = unique;
        const mode = args.full ? 'full' : args.incremental ? 'incremental' : 'auto';
        const lockWait = parseWait(args.wait);
        for (const name of names) {
          ctx.signal.throwIfAborted();
          try {
            const record = await makeBackupSet(ctx.dirs, name, {
              mode,
              log: ctx.log,
              signal: ctx.signal,
              lockWait,
              maxChain: args.maxChain,
              keepSnapshots: args.keepSnapshots ?? DEFAULT_KEEP_SNAPSHOTS,
            });
            ctx.log.verbose(`${name}: snapshots in ${record.set}`);
            await writeOut(formatRecord(record));
          } catch (err) {
            if (ctx.signal.aborted || !(err instanceof SbkError)) throw err;
            ctx.log.error(`${name}: ${err.message}`);
            failed = err;
          }
        }
        if (failed) return names.length === 1 && !args.all ? failed.exitCode : ExitCode.failure;
      },
    },
    argv,
  );
}
