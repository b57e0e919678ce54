// Snapshot sets: `<backup-dir>/<c>/<time>[_Full]/<volume>`, the read-only snapshots each backup
// is sent from and the next incremental is sent against. A set is made under a hidden partial
// name and renamed when every snapshot exists; it becomes a valid parent only once its archive
// is stored (the CONFIRMED_MARKER file), so a backup that failed anywhere in the pipe is never
// a parent.
import { readdir, rm, readFile, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { SbkError, ExitCode } from '../core/errors.js';
import { CONFIRMED_MARKER, backupName, parseSetDirName, setDirName, type Dirs } from '../core/layout.js';
import { removeTree } from './btrfs.js';
import { writeFileAtomic } from './atomic.js';
import { backupLockFile, withLock } from './lock.js';
import type { SetRef } from '../formats/record.js';
import type { Log } from '../core/log.js';
import { isProcessAlive } from './proc.js';

export interface SetInfo extends SetRef {
  confirmed: boolean;
}

import { PARTIAL_SET_RE, RUN_FILE } from '../core/layout.js';

/** Snapshot sets of a container, oldest first (by time). Partial (unfinished) sets are not listed. */
export async function listSets(dirs: Dirs, container: string): Promise<SetInfo[]> {
  const cdir = path.join(dirs.backupDir, container);
  let names: string[];
  try {
    names = await readdir(cdir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const sets: SetInfo[] = [];
  for (const n of names) {
    const p = parseSetDirName(n);
    if (!p) continue;
    const set = path.join(cdir, n);
    const confirmed = await stat(path.join(set, CONFIRMED_MARKER)).then(
      () => true,
      () => false,
    );
    sets.push({ ...p, name: backupName(container, p.time, p.full), set, confirmed });
  }
  return sets.sort((a, b) => a.time - b.time || Number(b.full) - Number(a.full));
}

/** Removes a snapshot set (or a partial one): its snapshots with btrfs, then the directory. */
export async function removeSetDir(dir: string): Promise<void> {
  await removeTree(dir);
}

/**
 * Removes the snapshot set of a backup that failed in sbk-pack: only when it is here and not
 * confirmed (a confirmed set has its archive and may be a parent). The sbk-send upstream may
 * still be sending from it for a moment (btrfs refuses to delete a snapshot during a send, with
 * EPERM) until it sees that sbk-pack stopped reading: the delete is retried for `retryMs`.
 */
export async function discardFailedSet(
  dirs: Dirs,
  container: string,
  time: number,
  full: boolean,
  log: Log,
  opts: { retryMs?: number } = {},
): Promise<void> {
  const set = path.join(dirs.backupDir, container, setDirName(time, full));
  if (!(await stat(set).then((s) => s.isDirectory(), () => false))) return; // not made here
  await withLock(backupLockFile(dirs.backupDir, container), { holder: `sbk-pack (removing ${path.basename(set)})`, wait: 60 }, async () => {
    const here = await stat(set).then((s) => s.isDirectory(), () => false);
    if (!here || (await stat(path.join(set, CONFIRMED_MARKER)).then(() => true, () => false))) return;
    const until = Date.now() + (opts.retryMs ?? 10_000);
    for (;;) {
      try {
        await removeSetDir(set);
        break;
      } catch (err) {
        if (Date.now() >= until) throw err;
        await sleep(200);
      }
    }
    log.info(`removed the snapshots of the failed backup ${backupName(container, time, full)}`);
  });
}

/** Removes partial sets left by killed runs (their process is gone). */
export async function removeStalePartials(dirs: Dirs, container: string, log: Log): Promise<void> {
  const cdir = path.join(dirs.backupDir, container);
  const names = await readdir(cdir).catch(() => [] as string[]);
  for (const n of names) {
    const m = PARTIAL_SET_RE.exec(n);
    if (!m || isProcessAlive(Number(m[2]))) continue;
    log.info(`removing ${n}, left by a run that did not finish`);
    await removeSetDir(path.join(cdir, n));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export interface Confirmation {
  sbk: 'confirmation';
  /**
   * Who confirmed it: sbk-pack, having stored the archive in this backup dir, or sbk-snap
   * --confirm from a receipt (the archive is kept elsewhere). Older confirmations have no such
   * field: those with a host or path came from a receipt.
   */
  by?: 'sbk-pack' | 'receipt';
  name: string;
  archive: string;
  size: number;
  sha256: string;
  stored: string;
  /** Where the archive is kept when not in this backup dir (a receipt's host and path). */
  host?: string;
  path?: string;
  /** Incrementals since the last Full in this backup's chain (0 for a Full; null: not known). */
  depth?: number | null;
}

/** Marks a set as a valid parent: its archive is stored. */
async function confirmSet(set: string, c: Confirmation): Promise<void> {
  await writeFileAtomic(path.join(set, CONFIRMED_MARKER), JSON.stringify(c) + '\n');
}

/** True when the set was confirmed from a receipt: its archive is not kept in this backup dir. */
export const confirmedByReceipt = (c: Confirmation) =>
  c.by === 'receipt' || (c.by === undefined && (c.host !== undefined || c.path !== undefined));

export async function readConfirmation(set: string): Promise<Confirmation | undefined> {
  try {
    return JSON.parse(await readFile(path.join(set, CONFIRMED_MARKER), 'utf8')) as Confirmation;
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Runs, confirmation and retention of snapshot sets

/**
 * The run file: written by sbk-snap into each set it makes, removed once the set is confirmed.
 * It tells clean-up whether the pipeline that made the set may still be running (its shell, the
 * parent of sbk-snap, is alive): such a set, and the sets it is sent against, are never removed.
 * It also carries the chain length and the --keep-snapshots of the run to whoever confirms it
 * (its name: RUN_FILE in core/layout.ts).
 */
export interface SetRun {
  sbk: 'run';
  pid: number;
  ppid: number;
  host: string;
  started: string;
  depth: number | null;
  /** The sets this one is sent against and diffed with (absolute paths). */
  parent: string | null;
  previous: string | null;
  keepSnapshots?: number;
}

async function readRun(set: string): Promise<SetRun | undefined> {
  try {
    const v = JSON.parse(await readFile(path.join(set, RUN_FILE), 'utf8')) as SetRun;
    return v && v.sbk === 'run' ? v : undefined;
  } catch {
    return undefined;
  }
}

/** True while the pipeline that made the set may still be running. */
function runAlive(run: SetRun | undefined): boolean {
  if (!run || run.host !== hostname()) return false;
  // A parent of 1 (init) is always alive: it says nothing about the pipeline.
  return isProcessAlive(run.pid) || (run.ppid > 1 && isProcessAlive(run.ppid));
}

/**
 * Incrementals since the last Full in the chain of `set` (a confirmed set): recorded at its
 * confirmation; for sets confirmed by an older sbk, counted from the confirmed sets since the
 * newest confirmed Full set before it. null when that Full set is gone.
 */
export async function chainDepth(dirs: Dirs, container: string, set: SetInfo): Promise<number | null> {
  const recorded = (await readConfirmation(set.set))?.depth;
  if (typeof recorded === 'number') return recorded;
  if (set.full) return 0;
  const confirmed = (await listSets(dirs, container)).filter((s) => s.confirmed && s.time <= set.time);
  const lastFull = confirmed.map((s) => s.full).lastIndexOf(true);
  return lastFull < 0 ? null : confirmed.length - 1 - lastFull;
}

export interface ConfirmOptions {
  log: Log;
  /** Confirmed sets to keep; undefined: the run's --keep-snapshots, else defaultKeep, else no pruning. */
  keep?: number;
  defaultKeep?: number;
}

/**
 * What confirming a set did: the sets pruned after it, and a failed prune. A failed prune does
 * not undo the confirmation: it travels back as `pruneError`, always an SbkError naming the
 * container (made by pruneAfterConfirm only), for the caller to report.
 */
export interface ConfirmResult {
  removed: string[];
  pruneError?: SbkError;
}

/** pruneSets for a set just confirmed: its failure returned as `pruneError`, not thrown. */
export async function pruneAfterConfirm(dirs: Dirs, container: string, opts: { keep: number; log: Log }): Promise<ConfirmResult> {
  try {
    return { removed: await pruneSets(dirs, container, opts) };
  } catch (err) {
    const e = err instanceof SbkError ? err : new SbkError(`${container}: pruning snapshot sets failed: ${(err as Error).message}`, ExitCode.failure, { cause: err });
    return { removed: [], pruneError: e };
  }
}

/**
 * Confirms a set: writes the marker (with the chain length from the run file), removes the run
 * file, and prunes older sets when a --keep-snapshots applies. The caller holds the container's
 * lock. A failed prune is returned (see ConfirmResult).
 */
export async function confirmBackupSet(
  dirs: Dirs,
  container: string,
  set: string,
  c: Confirmation,
  opts: ConfirmOptions,
): Promise<ConfirmResult> {
  const run = await readRun(set);
  await confirmSet(set, { ...c, depth: c.depth ?? run?.depth ?? null });
  await rm(path.join(set, RUN_FILE), { force: true });
  const keep = opts.keep ?? run?.keepSnapshots ?? opts.defaultKeep;
  if (keep === undefined) return { removed: [] };
  return pruneAfterConfirm(dirs, container, { keep, log: opts.log });
}

/**
 * Retention of snapshot sets (the caller holds the container's lock): keeps the newest `keep`
 * confirmed sets (the newest is the next parent: always kept), removes older confirmed ones and
 * unconfirmed sets older than the newest confirmed one (left by failed runs). Never removes a set
 * whose run may still be going (an unconfirmed set newer than the newest confirmed one, or one
 * whose pipeline's shell is alive), nor the sets such a run is sent against. Returns the removed
 * set paths.
 */
async function pruneSets(dirs: Dirs, container: string, opts: { keep: number; log: Log }): Promise<string[]> {
  const { log } = opts;
  const keep = Math.max(1, Math.floor(opts.keep));
  await removeStalePartials(dirs, container, log);
  const sets = await listSets(dirs, container);
  const confirmed = sets.filter((s) => s.confirmed);
  if (confirmed.length === 0) return [];
  const newest = confirmed[confirmed.length - 1]!;
  const kept = new Set(confirmed.slice(-keep).map((s) => s.set));
  // Sets of runs that may be in progress, and what they need.
  const inUse = new Set<string>();
  for (const s of sets) {
    if (s.confirmed) continue;
    const run = await readRun(s.set);
    if (s.time > newest.time || runAlive(run)) {
      inUse.add(s.set);
      if (run?.parent) inUse.add(run.parent);
      if (run?.previous) inUse.add(run.previous);
    }
  }
  const removed: string[] = [];
  const failed: { set: string; err: unknown }[] = [];
  for (const s of sets) {
    if (kept.has(s.set) || inUse.has(s.set)) continue;
    if (!s.confirmed && s.time > newest.time) continue;
    try {
      await removeSetDir(s.set);
      removed.push(s.set);
      log.verbose(`removed snapshot set ${s.set} (${s.confirmed ? `older than the ${keep} kept` : 'unconfirmed, left by a failed run'})`);
    } catch (err) {
      failed.push({ set: s.set, err }); // the others are still tried
    }
  }
  if (failed.length) {
    const [first] = failed;
    const more = failed.length > 1 ? ` (and ${failed.length - 1} more)` : '';
    throw new SbkError(`${container}: could not remove snapshot set ${first!.set}${more}: ${(first!.err as Error).message}`, ExitCode.failure, {
      cause: first!.err,
    });
  }
  return removed;
}
