// sbk-snap's work: making a backup's snapshot set (`<backup-dir>/<c>/<time>[_Full]/<volume>`,
// the read-only snapshots the backup is sent from and the next incremental is sent against),
// choosing its parent (the newest valid one, its local chain whole), and confirming sets from
// the receipts of stored archives. A set is made under a hidden partial name and renamed when
// every snapshot exists; it becomes a valid parent only once its archive is stored (the
// CONFIRMED_MARKER file), so a backup that failed anywhere in the pipe is never a parent. The
// sets on disk (listing, confirming, pruning) are src/system/sets.ts.
import { mkdir, readdir, rename, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { SbkError, ExitCode } from '../../core/errors.js';
import { PARTIAL_SET_RE, RUN_FILE, archiveFileNames, backupName, checkContainerName, partialSetName, setDirName, type Dirs } from '../../core/layout.js';
import { isSubvolume, snapshot, subvolumeInfo, subvolumeInfos } from '../../system/btrfs.js';
import { writeFileAtomic } from '../../system/atomic.js';
import { backupLockFile, withLock } from '../../system/lock.js';
import type { BackupRecord, SetRef, VolumeRecord } from '../../formats/record.js';
import { RECORD_FORMAT } from '../../formats/record.js';
import type { Log } from '../../core/log.js';
import type { Receipt } from '../../formats/receipt.js';
import { readArchiveHead } from '../../formats/archive/open.js';
import { containerVolumes, type ContainerVolumes } from '../../system/lxc.js';
import { snapshotsHeldStill, type HoldMode } from './consistency.js';
import {
  chainDepth,
  confirmBackupSet,
  confirmedByReceipt,
  listSets,
  pruneAfterConfirm,
  readConfirmation,
  removeSetDir,
  removeStalePartials,
  type ConfirmOptions,
  type ConfirmResult,
  type Confirmation,
  type SetInfo,
  type SetRun,
} from '../../system/sets.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * The newest valid parent: a confirmed set whose snapshots of the container's volumes exist and
 * are read-only. Volumes missing from it are sent whole.
 */
async function newestValidParent(
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
    // One `btrfs subvolume list` for the set's volumes: each process is mostly start-up.
    const infos = await subvolumeInfos(names.map((name) => path.join(s.set, name)), signal);
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


/**
 * A unix time for a new set: after every existing set and archive of the container. Two backups
 * in the same second would collide, so wait for the next second (up to 2 s); a clock further
 * behind than that is an error.
 */
async function nextTime(dirs: Dirs, container: string): Promise<number> {
  const sets = await listSets(dirs, container);
  const partial = (await readdir(path.join(dirs.backupDir, container)).catch(() => [] as string[]))
    .map((n) => PARTIAL_SET_RE.exec(n))
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
  /** How a running container is held still for the snapshots (consistency.ts). */
  hold: HoldMode;
  /** --freeze-timeout, seconds. */
  freezeTimeoutS: number;
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

/** Full or incremental, and the chain length the new set will have (null: not known). */
interface SetKind {
  full: boolean;
  depth: number | null;
}

/**
 * Full or incremental: --full, else an incremental on the newest valid parent, unless there is
 * none, its local chain has a gap, or (auto mode) --max-chain is reached.
 */
async function chooseKind(
  dirs: Dirs,
  container: string,
  previous: { set: SetInfo } | undefined,
  opts: SnapOptions,
): Promise<SetKind> {
  const { log } = opts;
  if (opts.mode === 'full') return { full: true, depth: 0 };
  if (!previous) {
    if (opts.mode === 'incremental') throw new SbkError(`no valid parent backup for an incremental (make a Full first)`, ExitCode.notFound);
    log.info(`${container}: no valid parent backup, making a Full backup`);
    return { full: true, depth: 0 };
  }
  // A parent whose archives were stored here can only be restored from here: when one of its
  // chain's archives is gone (removed by hand), every incremental on it would be useless.
  const gap = await localChainGap(dirs, container, previous.set);
  if (gap) {
    const why = `the chain of ${previous.set.name} is not whole: ${gap}`;
    if (opts.mode === 'incremental') throw new SbkError(`${why} (make a Full first)`, ExitCode.notFound);
    log.info(`${container}: ${why}; making a Full backup`);
    return { full: true, depth: 0 };
  }
  // The chain length: Full 0, an incremental one more than its parent (recorded at confirmation).
  const parentDepth = await chainDepth(dirs, container, previous.set);
  const depth = parentDepth === null ? null : parentDepth + 1;
  if (opts.maxChain !== undefined && opts.mode === 'auto') {
    if (depth === null) {
      log.info(`${container}: the chain length of ${previous.set.name} is not known; making a Full backup (--max-chain ${opts.maxChain})`);
      return { full: true, depth: 0 };
    }
    if (depth > opts.maxChain) {
      log.info(`${container}: ${depth - 1} incrementals since the last Full (--max-chain ${opts.maxChain}); making a Full backup`);
      return { full: true, depth: 0 };
    }
  }
  return { full: false, depth };
}

/** The run file of a set being made (see RUN_FILE). */
function runOf(kind: SetKind, previous: { set: SetInfo } | undefined, keepSnapshots: number | undefined): SetRun {
  return {
    sbk: 'run',
    pid: process.pid,
    ppid: process.ppid,
    host: hostname(),
    started: new Date().toISOString(),
    depth: kind.depth,
    parent: kind.full ? null : (previous?.set.set ?? null),
    previous: previous?.set.set ?? null,
    ...(keepSnapshots !== undefined ? { keepSnapshots } : {}),
  };
}

/**
 * Snapshots every volume into `partialDir`, all at once: the snapshots are taken in (about) the
 * same transaction, closer in time than one after the other, and the btrfs processes start in
 * parallel. A failure of any one lets the others finish before it is thrown (the caller then
 * removes the partial set). Only the snapshots: a frozen container waits for nothing else.
 */
async function snapshotVolumes(cv: ContainerVolumes, partialDir: string, signal?: AbortSignal): Promise<void> {
  const snapshotted = await Promise.allSettled(
    cv.volumes.map((v) => snapshot(v.source, path.join(partialDir, v.name), { readonly: true }, signal)),
  );
  const failed = snapshotted.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/** Each snapshot's UUID, in the order of `cv.volumes` (all from one `btrfs subvolume list`). */
async function snapshotUuids(cv: ContainerVolumes, partialDir: string, signal?: AbortSignal): Promise<string[]> {
  return (await subvolumeInfos(cv.volumes.map((v) => path.join(partialDir, v.name)), signal)).map((info) => info.uuid);
}

const setRef = (s: SetInfo | undefined): SetRef | null => (s ? { time: s.time, full: s.full, name: s.name, set: s.set } : null);

async function makeSetLocked(dirs: Dirs, cv: ContainerVolumes, opts: SnapOptions): Promise<BackupRecord> {
  const { log, signal } = opts;
  const { container } = cv;
  for (const s of cv.skipped) log.verbose(`${container}: not backed up: ${s.source} (${s.reason})`);
  const cdir = path.join(dirs.backupDir, container);
  await mkdir(cdir, { recursive: true });
  await removeStalePartials(dirs, container, log);

  const previous = await newestValidParent(dirs, container, log, signal);
  const kind = await chooseKind(dirs, container, previous, opts);
  const { full } = kind;
  const time = await nextTime(dirs, container);
  const finalName = setDirName(time, full);
  const partialDir = path.join(cdir, partialSetName(time, full));
  const finalDir = path.join(cdir, finalName);
  await mkdir(partialDir);
  try {
    await writeFileAtomic(path.join(partialDir, RUN_FILE), JSON.stringify(runOf(kind, previous, opts.keepSnapshots)) + '\n');
    signal?.throwIfAborted();
    const how = await snapshotsHeldStill(cv, dirs.lxcDir, { hold: opts.hold, freezeTimeoutS: opts.freezeTimeoutS, log, signal }, (held) =>
      snapshotVolumes(cv, partialDir, held),
    );
    const uuids = await snapshotUuids(cv, partialDir, signal);
    const volumes: VolumeRecord[] = cv.volumes.map((v, i) => ({
      name: v.name,
      mount: v.mount,
      source: v.source,
      snapshot: path.join(finalDir, v.name),
      uuid: uuids[i]!,
      parentUuid: !full && previous ? (previous.uuids.get(v.name) ?? null) : null,
    }));
    signal?.throwIfAborted();
    await rename(partialDir, finalDir);
    return {
      sbk: 'backup',
      format: RECORD_FORMAT,
      container,
      time,
      full,
      name: backupName(container, time, full),
      set: finalDir,
      containerDir: cv.containerDir,
      parent: full ? null : setRef(previous?.set),
      previous: setRef(previous?.set),
      volumes,
      ...how,
    };
  } catch (err) {
    await removeSetDir(partialDir).catch((e) => log.error(`could not remove ${partialDir}: ${(e as Error).message}`));
    throw err;
  }
}

/**
 * Why the chain of a set confirmed here (by sbk-pack) cannot be restored from this backup dir:
 * the first archive from the set back to its Full that is missing or unreadable, following the
 * parents the manifests name. undefined when the chain is whole, or when the set was confirmed
 * from a receipt (judged by its receipts: the archives are kept elsewhere).
 */
async function localChainGap(dirs: Dirs, container: string, set: SetRef): Promise<string | undefined> {
  const c = await readConfirmation(set.set);
  if (!c || confirmedByReceipt(c)) return undefined;
  let link: { time: number; full: boolean } | null = set;
  for (let seen = 0; link && seen < 100_000; seen++) {
    // Under the name of whichever codec made it.
    const names = archiveFileNames(container, link.time, link.full);
    let name: string | undefined;
    for (const n of names) if (await stat(path.join(dirs.backupDir, n)).then((st) => st.isFile(), () => false)) name ??= n;
    if (!name) return `${names[0]} (or ${names.slice(1).join(', ')}) is not in ${dirs.backupDir}`;
    const file = path.join(dirs.backupDir, name);
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

/** What a receipt says about a stored archive (see receipts.ts); only the first fields are required. */
export type StoredReceipt = Omit<Receipt, 'sbk' | 'format'>;

/**
 * Refuses a receipt whose volumes are not the set's snapshots: its list must name every snapshot
 * of the set (an empty or partial one would leave snapshots unchecked against the stored
 * archive), each with the UUID the stored archive was sent from.
 */
async function checkReceiptMatchesSet(r: StoredReceipt, set: string, signal?: AbortSignal): Promise<void> {
  if (!r.volumes) return;
  const mismatch = (why: string) => new SbkError(`${r.name}: the receipt does not match the snapshot set ${set}: ${why}`, ExitCode.corrupt);
  const listed = new Set(r.volumes.map((v) => v.name));
  for (const e of await readdir(set, { withFileTypes: true })) {
    if (!e.isDirectory() || e.name.startsWith('.') || listed.has(e.name)) continue;
    if (await isSubvolume(path.join(set, e.name)).catch(() => false)) throw mismatch(`it does not list its volume ${e.name}`);
  }
  for (const v of r.volumes) {
    const p = path.join(set, v.name);
    const uuid = (await isSubvolume(p).catch(() => false)) ? (await subvolumeInfo(p, signal)).uuid : undefined;
    if (uuid !== v.uuid) throw mismatch(`its ${v.name} is ${uuid ?? 'missing'}, the stored archive's is ${v.uuid}`);
  }
}

/** The confirmation a receipt makes. */
const confirmationOf = (r: StoredReceipt): Confirmation =>
  ({
    sbk: 'confirmation',
    by: 'receipt',
    name: r.name,
    archive: r.archive ?? (r.path ? path.basename(r.path) : undefined),
    size: r.size,
    sha256: r.sha256,
    stored: r.stored ?? new Date().toISOString(),
    host: r.host,
    path: r.path,
  }) as Confirmation;

/**
 * `sbk-snap --confirm`: marks the snapshot set a receipt names as confirmed (a valid parent),
 * under the container's lock, after checking that the receipt's volume UUIDs are the set's
 * snapshots (a receipt for another backup of the same name confirms nothing). Then prunes as
 * confirmBackupSet does (a failed prune: `pruneError`, see ConfirmResult). Confirming a
 * confirmed set again is harmless.
 */
export async function confirmFromReceipt(
  dirs: Dirs,
  r: StoredReceipt,
  opts: ConfirmOptions & { lockWait?: number; signal?: AbortSignal },
): Promise<ConfirmResult & { set: string; already: boolean }> {
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
      await checkReceiptMatchesSet(r, set, opts.signal);
      const already = (await readConfirmation(set)) !== undefined;
      if (already) {
        // Keep the first confirmation (and its chain length); still apply retention.
        const keep = opts.keep ?? opts.defaultKeep;
        if (keep === undefined) return { set, already, removed: [] };
        return { set, already, ...(await pruneAfterConfirm(dirs, r.container, { keep, log: opts.log })) };
      }
      return { set, already, ...(await confirmBackupSet(dirs, r.container, set, confirmationOf(r), opts)) };
    },
  );
}
