// sbk-snap's runs over several containers or receipts: which containers a run backs up, one
// snapshot set each (one failing does not stop the others); and --confirm, one receipt at a
// time. Each returns the exit code of its partial failures (undefined: none).
import type { Readable } from 'node:stream';
import { SbkError, ExitCode } from '../../core/errors.js';
import { checkContainerName, type Dirs } from '../../core/layout.js';
import type { Log } from '../../core/log.js';
import { readReceipts, type Receipt } from '../../formats/receipt.js';
import type { BackupRecord } from '../../formats/record.js';
import { findContainers } from '../../system/lxc.js';
import { confirmFromReceipt, makeBackupSet, type SnapOptions } from './snap.js';

export interface SnapRunOptions extends Omit<SnapOptions, 'signal'> {
  signal: AbortSignal;
  /** --all: every container in the LXC dir (no names given). */
  all: boolean;
  /** Receives each backup's record once its snapshot set exists. */
  emit: (r: BackupRecord) => Promise<void>;
}

/**
 * The containers to back up: the names given (checked, each once), or with --all those found.
 * A container --all found but cannot back up is an error, said before any backup starts, one
 * line each: never a silent gap in a cron job's backups.
 */
async function containersOf(dirs: Dirs, given: string[], all: boolean, log: Log): Promise<{ names: string[]; failed?: SbkError }> {
  let names = given;
  let failed: SbkError | undefined;
  if (all) {
    if (names.length) throw new SbkError('give container names or --all, not both', ExitCode.usage);
    const found = await findContainers(dirs, log);
    for (const u of found.unusable) {
      log.error(`${u.name}: not backed up: ${u.error.message}`);
      failed = u.error;
    }
    for (const t of found.templates) log.verbose(`skipping ${t}: a Subutai template (its rootfs is read-only)`);
    names = found.names;
    if (!names.length && !found.unusable.length) {
      const templates = found.templates.length ? ` (only templates: ${found.templates.join(', ')})` : '';
      throw new SbkError(`no containers found in ${dirs.lxcDir}${templates}`, ExitCode.notFound);
    }
    if (!names.length) return { names, failed };
  }
  if (!names.length) throw new SbkError('no container given (or use --all)', ExitCode.usage);
  for (const n of names) checkContainerName(n);
  // A name given twice is one backup: a second set of the same container in the same run
  // would only be an incremental on nothing new, and its parent is not confirmed yet.
  const unique = [...new Set(names)];
  for (const n of unique) if (names.indexOf(n) !== names.lastIndexOf(n)) log.warn(`${n} is named more than once: backed up once`);
  return { names: unique, failed };
}

/** How a set was taken, as -v says it. */
function describeConsistency(r: BackupRecord): string {
  switch (r.consistency) {
    case 'frozen':
      return r.frozenMs === undefined ? 'frozen: it was frozen already' : `frozen for ${r.frozenMs} ms`;
    case 'stopped':
      return 'stopped';
    case 'live':
      return 'live: taken while it ran, not frozen';
    default:
      return 'consistency not recorded';
  }
}

/** One snapshot set per container; the exit code when any failed. */
export async function snapContainers(dirs: Dirs, given: string[], opts: SnapRunOptions): Promise<number | undefined> {
  const { all, emit, ...snapOpts } = opts;
  const { log, signal } = opts;
  const { names, failed: unusable } = await containersOf(dirs, given, all, log);
  if (!names.length) return ExitCode.failure;
  let failed = unusable;
  for (const name of names) {
    signal.throwIfAborted();
    try {
      const record = await makeBackupSet(dirs, name, snapOpts);
      log.verbose(`${name}: snapshots in ${record.set} (${describeConsistency(record)})`);
      await emit(record);
    } catch (err) {
      if (signal.aborted || !(err instanceof SbkError)) throw err;
      log.error(`${name}: ${err.message}`);
      failed = err;
    }
  }
  if (failed) return names.length === 1 && !all ? failed.exitCode : ExitCode.failure;
  return undefined;
}

export interface ConfirmRunOptions {
  log: Log;
  signal: AbortSignal;
  keep?: number;
  defaultKeep: number;
  lockWait?: number;
  /** Receives each receipt once its set is confirmed. */
  emit: (r: Receipt) => Promise<void>;
}

/**
 * `--confirm`: receipts in (sbk-pack --store output), snapshot sets confirmed. Each set is
 * confirmed as its receipt arrives. A receipt for a set that is not here, or whose snapshots are
 * not the ones the archive was sent from, is an error (named, the others go on); malformed input
 * stops at its line (exit 3). Returns the exit code when any failed.
 */
export async function confirmReceipts(dirs: Dirs, input: Readable, opts: ConfirmRunOptions): Promise<number | undefined> {
  const { log, signal } = opts;
  let count = 0;
  const failures: SbkError[] = [];
  for await (const { receipt } of readReceipts(input)) {
    signal.throwIfAborted();
    count++;
    try {
      const r = await confirmFromReceipt(dirs, receipt, { log, keep: opts.keep, defaultKeep: opts.defaultKeep, lockWait: opts.lockWait, signal });
      log.verbose(`${receipt.name}: ${r.already ? 'was already confirmed' : 'confirmed'} (${r.set})`);
      if (r.pruneError) {
        log.error(r.pruneError.message);
        failures.push(r.pruneError);
      }
      await opts.emit(receipt);
    } catch (err) {
      if (signal.aborted || !(err instanceof SbkError)) throw err;
      log.error(err.message);
      failures.push(err);
    }
  }
  // Nothing at all: the stages before failed (their message says why); a plain `sh` pipe,
  // whose status is this stage's, must fail too.
  if (count === 0) throw new SbkError('no input (did the stage before fail?): no receipts on stdin: nothing confirmed', ExitCode.badInput);
  if (!failures.length) return undefined;
  const codes = new Set(failures.map((f) => f.exitCode));
  return codes.size === 1 ? failures[0]!.exitCode : ExitCode.failure;
}
