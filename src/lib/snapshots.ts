// Snapshot sets: `<backup-dir>/<c>/<time>[_Full]/<volume>`, the read-only snapshots each backup
// is sent from and the next incremental is sent against. A set is made under a hidden partial
// name and renamed when every snapshot exists; it becomes a valid parent only once its archive
// is stored (the CONFIRMED_MARKER file), so a backup that failed anywhere in the pipe is never
// a parent.
import { mkdir, readdir, rename, rm, readFile, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { SbkError, ExitCode, describeSystemError } from './errors.js';
import {
  CONFIRMED_MARKER,
  archiveFileName,
  backupName,
  checkContainerName,
  isValidVolumeName,
  parseSetDirName,
  setDirName,
  type Dirs,
} from './layout.js';
import { configVolumes, readContainerConfig, type VolumeRef } from './lxc.js';
import { deleteSubvolumes, isSubvolume, requireSubvolume, snapshot, subvolumeInfo, type SubvolumeInfo } from './btrfs.js';
import { exists, writeFileAtomic } from './atomic.js';
import { backupLockFile, withLock } from './lock.js';
import type { BackupRecord, SetRef, VolumeRecord } from './record.js';
import { RECORD_FORMAT } from './record.js';
import type { Log } from './log.js';
import type { Receipt } from './receipts.js';
import { isProcessAlive } from './proc.js';
import { readArchiveHead } from './chain.js';

export interface SetInfo extends SetRef {
  confirmed: boolean;
}

const PARTIAL_RE = /^\.(\d+(?:_Full)?)\.partial-(\d+)$/;

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

export interface ContainerVolumes {
  container: string;
  containerDir: string;
  volumes: VolumeRef[];
  skipped: { source: string; reason: string }[];
}

/** Reads a container's volumes from its config and checks that each is a BTRFS subvolume. */
export async function containerVolumes(dirs: Dirs, container: string): Promise<ContainerVolumes> {
  checkContainerName(container);
  const containerDir = path.join(dirs.lxcDir, container);
  const cfg = await readContainerConfig(containerDir);
  const { volumes, skipped } = configVolumes(cfg, containerDir);
  for (const v of volumes) {
    // Volume names become archive entry names (`<volume>.delta`): refuse what the format cannot hold
    // here, before any snapshot is made, rather than at sbk-send.
    if (!isValidVolumeName(v.name))
      throw new SbkError(
        `volume '${v.name}' of ${container} has a name sbk cannot archive (letters, digits and _ . + - only; not 'meta')`,
        ExitCode.badInput,
      );
    await requireSubvolume(v.source, `volume ${v.name} of ${container}:`);
  }
  return { container, containerDir, volumes, skipped };
}

export interface FoundContainers {
  /** Containers that can be backed up, in name order. */
  names: string[];
  /** Containers (directories with an LXC config) that cannot be backed up, and why. */
  unusable: { name: string; error: SbkError }[];
}

/**
 * Containers in the LXC dir: directories with a config whose volumes are all subvolumes. A
 * directory with a config that cannot be backed up (a volume that is a plain directory, a
 * rootfs on another backend …) is a container all the same: it is returned in `unusable`, for
 * the caller to report, never dropped in silence (a cron job would lose its backups for ever).
 * Directories without a config are not containers (said with -v).
 */
export async function findContainers(dirs: Dirs, log: Log): Promise<FoundContainers> {
  let entries;
  try {
    entries = await readdir(dirs.lxcDir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new SbkError(`LXC directory ${dirs.lxcDir} does not exist`, ExitCode.notFound);
    throw err;
  }
  const found: FoundContainers = { names: [], unusable: [] };
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (!e.isDirectory() || e.name.startsWith('.')) continue;
    if (path.join(dirs.lxcDir, e.name) === dirs.backupDir || e.name === 'backups') continue;
    if (!(await exists(path.join(dirs.lxcDir, e.name, 'config')))) {
      log.verbose(`skipping ${e.name}: no LXC config in it (not a container)`);
      continue;
    }
    try {
      await containerVolumes(dirs, e.name);
      found.names.push(e.name);
    } catch (err) {
      const error =
        err instanceof SbkError
          ? err
          : (describeSystemError(err, path.join(dirs.lxcDir, e.name)) ?? new SbkError((err as Error).message, ExitCode.failure, { cause: err }));
      found.unusable.push({ name: e.name, error });
    }
  }
  return found;
}

/**
 * The newest valid parent: a confirmed set whose snapshots of the container's volumes exist and
 * are read-only. Volumes missing from it are sent whole.
 */
export async function newestValidParent(
  dirs: Dirs,
  container: string,
  log: Log,
  signal?: AbortSignal,
): Promise<{ set: SetInfo; uuids: Map<string, string> } | undefined> {
  const sets = (await listSets(dirs, container)).filter((s) => s.confirmed).reverse();
  for (const s of sets) {
    const uuids = new Map<string, string>();
    let ok = true;
    const names: string[] = [];
    for (const name of await readdir(s.set)) {
      if (!name.startsWith('.') && (await isSubvolume(path.join(s.set, name)).catch(() => false))) names.push(name);
    }
    // One `btrfs subvolume show` per volume, all at once: each is mostly process start-up.
    const infos = await Promise.all(names.map((name) => subvolumeInfo(path.join(s.set, name), signal)));
    for (const [i, name] of names.entries()) {
      if (!infos[i]!.readonly) {
        log.warn(`snapshot ${path.join(s.set, name)} is not read-only; not using ${s.name} as a parent`);
        ok = false;
        break;
      }
      uuids.set(name, infos[i]!.uuid);
    }
    if (ok && uuids.size > 0) return { set: s, uuids };
  }
  return undefined;
}


async function removeSetDir(dir: string): Promise<void> {
  let names: string[] = [];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  const subvolumes: string[] = [];
  for (const n of names) {
    const p = path.join(dir, n);
    if (await isSubvolume(p).catch(() => false)) subvolumes.push(p);
  }
  await deleteSubvolumes(subvolumes);
  await rm(dir, { recursive: true, force: true });
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
    const m = PARTIAL_RE.exec(n);
    if (!m || isProcessAlive(Number(m[2]))) continue;
    log.info(`removing ${n}, left by a run that did not finish`);
    await removeSetDir(path.join(cdir, n));
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A unix time for a new set: after every existing set and archive of the container. Two backups
 * in the same second would collide, so wait for the next second (up to 2 s); a clock further
 * behind than that is an error.
 */
async function nextTime(dirs: Dirs, container: string): Promise<number> {
  const sets = await listSets(dirs, container);
  const partial = (await readdir(path.join(dirs.backupDir, container)).catch(() => [] as string[]))
    .map((n) => PARTIAL_RE.exec(n))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => parseInt(m[1]!, 10));
  const newest = Math.max(-1, ...sets.map((s) => s.time), ...partial);
  for (;;) {
    const now = Math.floor(Date.now() / 1000);
    if (now > newest) return now;
    if (newest - now > 2)
      throw new SbkError(
        `the clock (${now}) is behind the newest backup of ${container} (${newest}); fix the clock first`,
        ExitCode.failure,
      );
    await sleep(1000 - (Date.now() % 1000) + 5);
  }
}

export interface SnapOptions {
  mode: 'auto' | 'full' | 'incremental';
  log: Log;
  signal?: AbortSignal;
  /** Seconds to wait for another run holding the container's lock (undefined: fail at once). */
  lockWait?: number;
  /** --max-chain: in auto mode, make a Full once the parent's chain holds this many incrementals. */
  maxChain?: number;
  /** --keep-snapshots: recorded in the set's run file, applied when the set is confirmed. */
  keepSnapshots?: number;
}

/** Makes one snapshot set and returns its record. On failure removes what it made. */
export async function makeBackupSet(dirs: Dirs, container: string, opts: SnapOptions): Promise<BackupRecord> {
  const cv = await containerVolumes(dirs, container);
  await mkdir(dirs.backupDir, { recursive: true });
  return withLock(
    backupLockFile(dirs.backupDir, container),
    { holder: `sbk-snap ${container}`, wait: opts.lockWait, signal: opts.signal },
    () => makeSetLocked(dirs, cv, opts),
  );
}

async function makeSetLocked(dirs: Dirs, cv: ContainerVolumes, opts: SnapOptions): Promise<BackupRecord> {
  const { log, signal } = opts;
  const { container } = cv;
  for (const s of cv.skipped) log.verbose(`${container}: not backed up: ${s.source} (${s.reason})`);
  const cdir = path.join(dirs.backupDir, container);
  await mkdir(cdir, { recursive: true });
  await removeStalePartials(dirs, container, log);

  const previous = await newestValidParent(dirs, container, log, signal);
  let full: boolean;
  if (opts.mode === 'full') full = true;
  else if (previous) full = false;
  else if (opts.mode === 'incremental')
    throw new SbkError(`no valid parent backup for an incremental (make a Full first)`, ExitCode.notFound);
  else {
    full = true;
    log.info(`${container}: no valid parent backup, making a Full backup`);
  }

  // A parent whose archives were stored here can only be restored from here: when one of its
  // chain's archives is gone (removed by hand), every incremental on it would be useless.
  if (!full && previous) {
    const gap = await localChainGap(dirs, container, previous.set);
    if (gap) {
      const why = `the chain of ${previous.set.name} is not whole: ${gap}`;
      if (opts.mode === 'incremental') throw new SbkError(`${why} (make a Full first)`, ExitCode.notFound);
      full = true;
      log.info(`${container}: ${why}; making a Full backup`);
    }
  }

  // The chain length: Full 0, an incremental one more than its parent (recorded at confirmation).
  let depth: number | null = 0;
  if (!full && previous) {
    const parentDepth = await chainDepth(dirs, container, previous.set);
    depth = parentDepth === null ? null : parentDepth + 1;
    if (opts.maxChain !== undefined && opts.mode === 'auto') {
      if (depth === null) {
        full = true;
        log.info(`${container}: the chain length of ${previous.set.name} is not known; making a Full backup (--max-chain ${opts.maxChain})`);
      } else if (depth > opts.maxChain) {
        full = true;
        log.info(`${container}: ${depth - 1} incrementals since the last Full (--max-chain ${opts.maxChain}); making a Full backup`);
      }
      if (full) depth = 0;
    }
  }

  const time = await nextTime(dirs, container);
  const finalName = setDirName(time, full);
  const partialDir = path.join(cdir, `.${finalName}.partial-${process.pid}`);
  const finalDir = path.join(cdir, finalName);
  await mkdir(partialDir);
  try {
    const run: SetRun = {
      sbk: 'run',
      pid: process.pid,
      ppid: process.ppid,
      host: hostname(),
      started: new Date().toISOString(),
      depth,
      parent: full ? null : (previous?.set.set ?? null),
      previous: previous?.set.set ?? null,
      ...(opts.keepSnapshots !== undefined ? { keepSnapshots: opts.keepSnapshots } : {}),
    };
    await writeFileAtomic(path.join(partialDir, RUN_FILE), JSON.stringify(run) + '\n');
    signal?.throwIfAborted();
    // All volumes at once: the snapshots are taken in (about) the same transaction, closer in
    // time than one after the other, and the btrfs processes start in parallel. A failure of
    // any one lets the others finish before the partial set is removed (see catch).
    const snapshotted = await Promise.allSettled(
      cv.volumes.map(async (v) => {
        await snapshot(v.source, path.join(partialDir, v.name), { readonly: true }, signal);
        return subvolumeInfo(path.join(partialDir, v.name), signal);
      }),
    );
    const failed = snapshotted.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) throw failed.reason;
    const volumes: VolumeRecord[] = cv.volumes.map((v, i) => ({
      name: v.name,
      mount: v.mount,
      source: v.source,
      snapshot: path.join(finalDir, v.name),
      uuid: (snapshotted[i] as PromiseFulfilledResult<SubvolumeInfo>).value.uuid,
      parentUuid: !full && previous ? (previous.uuids.get(v.name) ?? null) : null,
    }));
    signal?.throwIfAborted();
    await rename(partialDir, finalDir);
    const ref = (s: SetInfo | undefined): SetRef | null =>
      s ? { time: s.time, full: s.full, name: s.name, set: s.set } : null;
    return {
      sbk: 'backup',
      format: RECORD_FORMAT,
      container,
      time,
      full,
      name: backupName(container, time, full),
      set: finalDir,
      containerDir: cv.containerDir,
      parent: full ? null : ref(previous?.set),
      previous: ref(previous?.set),
      volumes,
    };
  } catch (err) {
    await removeSetDir(partialDir).catch((e) => log.error(`could not remove ${partialDir}: ${(e as Error).message}`));
    throw err;
  }
}

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
export async function confirmSet(set: string, c: Confirmation): Promise<void> {
  await writeFileAtomic(path.join(set, CONFIRMED_MARKER), JSON.stringify(c) + '\n');
}

/** True when the set was confirmed from a receipt: its archive is not kept in this backup dir. */
export const confirmedByReceipt = (c: Confirmation) =>
  c.by === 'receipt' || (c.by === undefined && (c.host !== undefined || c.path !== undefined));

/**
 * Why the chain of a set confirmed here (by sbk-pack) cannot be restored from this backup dir:
 * the first archive from the set back to its Full that is missing or unreadable, following the
 * parents the manifests name. undefined when the chain is whole, or when the set was confirmed
 * from a receipt (judged by its receipts: the archives are kept elsewhere).
 */
export async function localChainGap(dirs: Dirs, container: string, set: SetRef): Promise<string | undefined> {
  const c = await readConfirmation(set.set);
  if (!c || confirmedByReceipt(c)) return undefined;
  let link: { time: number; full: boolean } | null = set;
  for (let seen = 0; link && seen < 100_000; seen++) {
    const name = archiveFileName(container, link.time, link.full);
    const file = path.join(dirs.backupDir, name);
    if (!(await stat(file).then((st) => st.isFile(), () => false))) return `${name} is not in ${dirs.backupDir}`;
    if (link.full) return undefined;
    let head;
    try {
      head = await readArchiveHead(file);
    } catch (err) {
      return `${name} cannot be read (${(err as Error).message})`;
    }
    if (!head.manifest) return `${name} is not an sbk archive`;
    const parent: { time: number; full: boolean } | null = head.manifest.parent;
    if (parent && parent.time >= link.time) return `${name} names a parent that is not older`;
    link = parent;
  }
  return undefined;
}

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
 * It also carries the chain length and the --keep-snapshots of the run to whoever confirms it.
 */
export const RUN_FILE = '.sbk-run';

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

export async function readRun(set: string): Promise<SetRun | undefined> {
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
async function chainDepth(dirs: Dirs, container: string, set: SetInfo): Promise<number | null> {
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
 * Confirms a set: writes the marker (with the chain length from the run file), removes the run
 * file, and prunes older sets when a --keep-snapshots applies. The caller holds the container's
 * lock. A failed prune does not undo the confirmation: it is returned for the caller to report.
 */
export async function confirmBackupSet(
  dirs: Dirs,
  container: string,
  set: string,
  c: Confirmation,
  opts: ConfirmOptions,
): Promise<{ removed: string[]; pruneError?: SbkError }> {
  const run = await readRun(set);
  await confirmSet(set, { ...c, depth: c.depth ?? run?.depth ?? null });
  await rm(path.join(set, RUN_FILE), { force: true });
  const keep = opts.keep ?? run?.keepSnapshots ?? opts.defaultKeep;
  if (keep === undefined) return { removed: [] };
  try {
    return { removed: await pruneSets(dirs, container, { keep, log: opts.log }) };
  } catch (err) {
    const e = err instanceof SbkError ? err : new SbkError(`${container}: pruning snapshot sets failed: ${(err as Error).message}`, ExitCode.failure, { cause: err });
    return { removed: [], pruneError: e };
  }
}

/**
 * Retention of snapshot sets (the caller holds the container's lock): keeps the newest `keep`
 * confirmed sets (the newest is the next parent: always kept), removes older confirmed ones and
 * unconfirmed sets older than the newest confirmed one (left by failed runs). Never removes a set
 * whose run may still be going (an unconfirmed set newer than the newest confirmed one, or one
 * whose pipeline's shell is alive), nor the sets such a run is sent against. Returns the removed
 * set paths.
 */
export async function pruneSets(dirs: Dirs, container: string, opts: { keep: number; log: Log }): Promise<string[]> {
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

/** What a receipt says about a stored archive (see receipts.ts); only the first fields are required. */
export type StoredReceipt = Omit<Receipt, 'sbk' | 'format'>;

/**
 * `sbk-snap --confirm`: marks the snapshot set a receipt names as confirmed (a valid parent),
 * under the container's lock, after checking that the receipt's volume UUIDs are the set's
 * snapshots (a receipt for another backup of the same name confirms nothing). Then prunes as
 * confirmBackupSet does. Confirming a confirmed set again is harmless.
 */
export async function confirmFromReceipt(
  dirs: Dirs,
  r: StoredReceipt,
  opts: ConfirmOptions & { lockWait?: number; signal?: AbortSignal },
): Promise<{ set: string; already: boolean; removed: string[]; pruneError?: SbkError }> {
  checkContainerName(r.container);
  const set = path.join(dirs.backupDir, r.container, setDirName(r.time, r.full));
  const exists = () => stat(set).then((s) => s.isDirectory(), () => false);
  if (!(await exists()))
    throw new SbkError(`${r.name}: no snapshot set ${set} to confirm (made with another backup dir or host, or removed)`, ExitCode.notFound);
  return withLock(
    backupLockFile(dirs.backupDir, r.container),
    { holder: `sbk-snap --confirm ${r.name}`, wait: opts.lockWait ?? 600, signal: opts.signal },
    async () => {
      if (!(await exists())) throw new SbkError(`${r.name}: the snapshot set ${set} was removed meanwhile`, ExitCode.notFound);
      if (r.volumes) {
        // The list must name every snapshot of the set: an empty or partial one would leave
        // snapshots unchecked against the stored archive.
        const listed = new Set(r.volumes.map((v) => v.name));
        for (const e of await readdir(set, { withFileTypes: true })) {
          if (!e.isDirectory() || e.name.startsWith('.') || listed.has(e.name)) continue;
          if (await isSubvolume(path.join(set, e.name)).catch(() => false))
            throw new SbkError(
              `${r.name}: the receipt does not match the snapshot set ${set}: it does not list its volume ${e.name}`,
              ExitCode.corrupt,
            );
        }
      }
      for (const v of r.volumes ?? []) {
        const p = path.join(set, v.name);
        const uuid = (await isSubvolume(p).catch(() => false)) ? (await subvolumeInfo(p, opts.signal)).uuid : undefined;
        if (uuid !== v.uuid)
          throw new SbkError(
            `${r.name}: the receipt does not match the snapshot set ${set}: its ${v.name} is ${uuid ?? 'missing'}, the stored archive's is ${v.uuid}`,
            ExitCode.corrupt,
          );
      }
      const already = (await readConfirmation(set)) !== undefined;
      const c = {
        sbk: 'confirmation',
        by: 'receipt',
        name: r.name,
        archive: r.archive ?? (r.path ? path.basename(r.path) : undefined),
        size: r.size,
        sha256: r.sha256,
        stored: r.stored ?? new Date().toISOString(),
        host: r.host,
        path: r.path,
      } as Confirmation;
      if (already) {
        // Keep the first confirmation (and its chain length); still apply retention.
        const keep = opts.keep ?? opts.defaultKeep;
        if (keep === undefined) return { set, already, removed: [] };
        try {
          return { set, already, removed: await pruneSets(dirs, r.container, { keep, log: opts.log }) };
        } catch (err) {
          return { set, already, removed: [], pruneError: err as SbkError };
        }
      }
      return { set, already, ...(await confirmBackupSet(dirs, r.container, set, c, opts)) };
    },
  );
}
