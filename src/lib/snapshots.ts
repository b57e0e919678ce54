// Snapshot sets: `<backup-dir>/<c>/<time>[_Full]/<volume>`, the read-only snapshots each backup
// is sent from and the next incremental is sent against. A set is made under a hidden partial
// name and renamed when every snapshot exists; it becomes a valid parent only once its archive
// is stored (the CONFIRMED_MARKER file), so a backup that failed anywhere in the pipe is never
// a parent.
import { mkdir, readdir, rename, rm, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { SbkError, ExitCode } from './errors.js';
import {
  CONFIRMED_MARKER,
  backupName,
  checkContainerName,
  parseSetDirName,
  setDirName,
  type Dirs,
} from './layout.js';
import { configVolumes, readContainerConfig, type VolumeRef } from './lxc.js';
import { deleteSubvolume, isSubvolume, requireSubvolume, snapshot, subvolumeInfo } from './btrfs.js';
import { writeFileAtomic } from './atomic.js';
import { backupLockFile, withLock } from './lock.js';
import type { BackupRecord, SetRef, VolumeRecord } from './record.js';
import { RECORD_FORMAT } from './record.js';
import type { Log } from './log.js';

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
  for (const v of volumes) await requireSubvolume(v.source, `volume ${v.name} of ${container}:`);
  return { container, containerDir, volumes, skipped };
}

/** Containers in the LXC dir: directories with a config whose volumes are all subvolumes. */
export async function findContainers(dirs: Dirs, log: Log): Promise<string[]> {
  let entries;
  try {
    entries = await readdir(dirs.lxcDir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new SbkError(`LXC directory ${dirs.lxcDir} does not exist`, ExitCode.notFound);
    throw err;
  }
  const found: string[] = [];
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (!e.isDirectory() || e.name.startsWith('.')) continue;
    if (path.join(dirs.lxcDir, e.name) === dirs.backupDir || e.name === 'backups') continue;
    try {
      await containerVolumes(dirs, e.name);
      found.push(e.name);
    } catch (err) {
      log.verbose(`skipping ${e.name}: ${(err as Error).message}`);
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
    for (const name of await readdir(s.set)) {
      const p = path.join(s.set, name);
      if (name.startsWith('.') || !(await isSubvolume(p).catch(() => false))) continue;
      const info = await subvolumeInfo(p, signal);
      if (!info.readonly) {
        log.warn(`snapshot ${p} is not read-only; not using ${s.name} as a parent`);
        ok = false;
        break;
      }
      uuids.set(name, info.uuid);
    }
    if (ok && uuids.size > 0) return { set: s, uuids };
  }
  return undefined;
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function removeSetDir(dir: string): Promise<void> {
  let names: string[] = [];
  try {
    names = await readdir(dir);
  } catch {
    return;
  }
  for (const n of names) {
    const p = path.join(dir, n);
    if (await isSubvolume(p).catch(() => false)) await deleteSubvolume(p);
  }
  await rm(dir, { recursive: true, force: true });
}

/** Removes partial sets left by killed runs (their process is gone). */
export async function removeStalePartials(dirs: Dirs, container: string, log: Log): Promise<void> {
  const cdir = path.join(dirs.backupDir, container);
  const names = await readdir(cdir).catch(() => [] as string[]);
  for (const n of names) {
    const m = PARTIAL_RE.exec(n);
    if (!m || isAlive(Number(m[2]))) continue;
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
    throw new SbkError(`${container}: no valid parent backup for an incremental (make a Full first)`, ExitCode.notFound);
  else {
    full = true;
    log.info(`${container}: no valid parent backup, making a Full backup`);
  }

  const time = await nextTime(dirs, container);
  const finalName = setDirName(time, full);
  const partialDir = path.join(cdir, `.${finalName}.partial-${process.pid}`);
  const finalDir = path.join(cdir, finalName);
  await mkdir(partialDir);
  try {
    const volumes: VolumeRecord[] = [];
    for (const v of cv.volumes) {
      signal?.throwIfAborted();
      await snapshot(v.source, path.join(partialDir, v.name), { readonly: true }, signal);
      const info = await subvolumeInfo(path.join(partialDir, v.name), signal);
      volumes.push({
        name: v.name,
        mount: v.mount,
        source: v.source,
        snapshot: path.join(finalDir, v.name),
        uuid: info.uuid,
        parentUuid: !full && previous ? (previous.uuids.get(v.name) ?? null) : null,
      });
    }
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
  name: string;
  archive: string;
  size: number;
  sha256: string;
  stored: string;
}

/** Marks a set as a valid parent: its archive is stored. */
export async function confirmSet(set: string, c: Confirmation): Promise<void> {
  await writeFileAtomic(path.join(set, CONFIRMED_MARKER), JSON.stringify(c) + '\n');
}

export async function readConfirmation(set: string): Promise<Confirmation | undefined> {
  try {
    return JSON.parse(await readFile(path.join(set, CONFIRMED_MARKER), 'utf8')) as Confirmation;
  } catch {
    return undefined;
  }
}
