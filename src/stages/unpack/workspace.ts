// Where a restore builds its container: a temporary directory on the LXC dir's filesystem, so
// that the finished container moves into place in one rename.
//
//   <lxc-dir>/.sbk-restore-<name>-<pid>/
//     new/                 the container directory being built: meta files, then live volumes
//     r<n>/<volume>/<sub>  what `btrfs receive` made from archive n (read-only, Received UUID)
//     old/                 with --force: the replaced container, until the new one is in place
//
// It holds the locks (one restore per target name, one per chain), removes what killed restores
// left, and on failure or signal deletes the directory with every subvolume in it: nothing
// appears at the target unless the commit was reached.
import { mkdir, readdir, rename, stat } from 'node:fs/promises';
import path from 'node:path';
import { acquireLock, chainLockFile, restoreLockFile, type Lock } from '../../system/lock.js';
import { isOnBtrfs, removeTree } from '../../system/btrfs.js';
import { exists, fsyncDir } from '../../system/atomic.js';
import { lxcContainerState, refuseIfActive } from '../../system/lxc.js';
import { startContainer, stopContainer } from '../../system/lxc-control.js';
import { isProcessAlive } from '../../system/proc.js';
import { SbkError, ExitCode, describeSystemError } from '../../core/errors.js';
import { RESTORE_TEMP_RE, checkContainerName, restoreTempDirName } from '../../core/layout.js';
import type { Log } from '../../core/log.js';


interface WorkspaceOptions {
  lxcDir: string;
  /** Replace an existing container, once the new one is complete. */
  force?: boolean;
  /** With force: stop the container being replaced (if LXC runs it) right before the swap. */
  stop?: boolean;
  /** Seconds a clean stop may take before it is forced (lxc-stop -k). */
  stopTimeoutS?: number;
  /** Seconds to wait for another restore of the same target (undefined: fail at once). */
  lockWait?: number;
  log: Log;
  signal: AbortSignal;
  /** The chain is replayed into plain directories (the LXC dir is not on BTRFS; no root needed). */
  replay?: boolean;
}

export class Workspace {
  private lock?: Lock;
  private chainLock?: Lock;
  /** The temporary directory; undefined before open() and once committed or discarded. */
  private tmp?: string;
  readonly target: string;

  constructor(
    private readonly opts: WorkspaceOptions,
    readonly name: string,
  ) {
    this.target = path.join(opts.lxcDir, name);
  }

  get dir(): string {
    return this.tmp!;
  }

  /** The container directory being built. */
  get work(): string {
    return path.join(this.dir, 'new');
  }

  /**
   * Checks the target and the LXC dir, takes the locks, removes dead restores' leftovers, and
   * makes the temporary directory. `first` is the chain's Full, whose lock this restore holds.
   */
  async open(first: { container: string; name: string }): Promise<void> {
    const { lxcDir, force, signal } = this.opts;
    const { name, target } = this;
    if (!this.opts.replay && process.getuid?.() !== 0)
      throw new SbkError('restoring needs root (btrfs receive); sbk-unpack --verify checks archives without it', ExitCode.failure);
    if ((await lxcDirOnBtrfs(lxcDir)) !== !this.opts.replay)
      throw new SbkError(`LXC directory ${lxcDir} ${this.opts.replay ? 'is' : 'is not'} on a BTRFS filesystem`, ExitCode.failure);
    // One restore per target at a time; held until the container is in place or cleaned up.
    this.lock = await acquireLock(restoreLockFile(lxcDir, name), {
      holder: `sbk-unpack (restore of ${name})`,
      wait: this.opts.lockWait,
      signal,
    });
    await sweep(this.opts, name);
    if (!force && (await exists(target)))
      throw new SbkError(
        `container ${name} already exists at ${target}; restore under another name with --as NAME, or replace it with --force`,
        ExitCode.conflict,
      );
    // --force over a running (or frozen …) container would delete its volumes from under it.
    // With --stop it keeps running while the archives are received and is stopped for the swap.
    if (force && !this.opts.stop && (await exists(target))) await refuseIfActive(lxcDir, name, 'replacing', signal);
    // One restore per chain at a time, whatever its name: btrfs receive finds an incremental's
    // parent by Received UUID anywhere on the filesystem, so it could pick the subvolume another
    // restore of the chain received (and deletes once applied). Taken after the name's lock.
    this.chainLock = await acquireLock(chainLockFile(lxcDir, first.container, first.name), {
      holder: `sbk-unpack (restore of ${first.name} as ${name})`,
      wait: this.opts.lockWait,
      signal,
    });
    const tmp = path.join(lxcDir, restoreTempDirName(name));
    await mkdir(tmp, { mode: 0o700 });
    this.tmp = tmp;
  }

  /**
   * Moves the finished container (of `backup`) into place, with --force swapping out the one
   * there, and removes the temporary directory. From the rename on, nothing is undone. Returns
   * whether a running container was stopped (--stop) to be replaced.
   */
  async commit(backup: string): Promise<{ stopped: boolean }> {
    const { lxcDir, log } = this.opts;
    const { name, target } = this;
    const tmp = this.dir;
    const { replaced, stopped } = await this.swapIn();
    this.tmp = undefined; // committed: from here on a failure must not remove the restored container
    // The container is in place: a failure to sync the LXC dir is reported as that, once the
    // temporary directory (with the replaced container) is gone as after any restore.
    let syncError: unknown;
    await fsyncDir(lxcDir).catch((err: unknown) => (syncError = err));
    try {
      await removeTree(tmp);
    } catch (err) {
      log.warn(
        `restored ${name}, but could not remove ${replaced ? 'the replaced container in ' : ''}${tmp}: ${(err as Error).message}; remove it by hand`,
      );
    }
    if (syncError !== undefined) {
      const why = describeSystemError(syncError)?.message ?? (syncError as Error).message;
      throw new SbkError(
        `restored ${backup}: ${name} is in place at ${target}${replaced ? ' (replaced the old one)' : ''}, but syncing ${lxcDir} failed (${why}); ` +
          'run sync: until then a crash may lose the rename',
        ExitCode.failure,
        { cause: syncError },
      );
    }
    log.info(`restored ${backup} as ${name} in ${target}${replaced ? ' (replaced the old one)' : ''}`);
    return { stopped };
  }

  /**
   * new/ to the target; with --force the container there goes to old/ first (put back if the
   * second rename fails). Returns whether one was replaced, and whether it was running and
   * stopped for that (--stop; started again if the swap fails). The existence check and rename
   * are two steps; a container appearing in between makes rename fail (ENOTEMPTY), except an
   * empty directory, which it replaces.
   */
  private async swapIn(): Promise<{ replaced: boolean; stopped: boolean }> {
    const { lxcDir } = this.opts;
    const { name, target } = this;
    let stopped = false;
    if (this.opts.force && this.opts.stop && (await exists(target))) stopped = await this.stopOld();
    try {
      return { replaced: await this.renameIn(), stopped };
    } catch (err) {
      // The old container is back in place (renameIn puts it back): it runs again, as it did
      // (unless someone started it meanwhile, which is why the swap was refused).
      if (stopped && (await exists(target)) && (await lxcContainerState(lxcDir, name))?.state === 'STOPPED')
        await startContainer(lxcDir, name, { log: this.opts.log }).then(
          () => this.opts.log.info(`started the old ${name} again: the restore did not replace it`),
          (e: unknown) => this.opts.log.error(`${(e as Error).message}; the old ${name} stays stopped`),
        );
      throw err;
    }
  }

  /** --stop: the container LXC runs at the target, stopped for the swap. Returns whether it ran. */
  private async stopOld(): Promise<boolean> {
    const { lxcDir, log } = this.opts;
    const state = await lxcContainerState(lxcDir, this.name, this.opts.signal);
    if (state === undefined || state.state === 'STOPPED') return false;
    await stopContainer(lxcDir, this.name, { timeoutS: this.opts.stopTimeoutS, log });
    return true;
  }

  private async renameIn(): Promise<boolean> {
    const { lxcDir, signal } = this.opts;
    const { name, target } = this;
    const old = path.join(this.dir, 'old');
    let replaced = false;
    const appeared = () => new SbkError(`container ${name} appeared at ${target} during the restore; not replacing it`, ExitCode.conflict);
    if (await exists(target)) {
      if (!this.opts.force) throw appeared();
      // Again: it may have been started while the archives were received (or since --stop).
      await refuseIfActive(lxcDir, name, 'replacing', signal);
      try {
        await rename(target, old);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EBUSY')
          throw new SbkError(`cannot replace ${target}: it is a mount point (or in use); unmount it first`, ExitCode.failure, { cause: err });
        throw describeSystemError(err, `cannot move ${target} aside`) ?? err;
      }
      replaced = true;
    }
    try {
      await rename(this.work, target);
    } catch (err) {
      if (replaced) await rename(old, target).catch(() => {}); // discard() tries again, and says so
      const code = (err as NodeJS.ErrnoException).code;
      // ENOTDIR: a file or symlink appeared; ENOTEMPTY/EEXIST: a directory.
      if (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR') throw appeared();
      if (code === 'EBUSY')
        throw new SbkError(`cannot restore at ${target}: it is a mount point (or in use); unmount it first`, ExitCode.failure, { cause: err });
      throw describeSystemError(err, `cannot move the restored container to ${target}`) ?? err;
    }
    return replaced;
  }

  /** After a failure: removes the temporary directory with every subvolume in it (not after the commit). */
  async discard(): Promise<void> {
    const tmp = this.tmp;
    if (!tmp) return;
    this.tmp = undefined;
    try {
      // With --force, the old container may sit in old/ if the swap failed half-way: put it back.
      const old = path.join(tmp, 'old');
      if ((await exists(old)) && !(await exists(this.target))) await rename(old, this.target);
      await removeTree(tmp);
    } catch (err) {
      this.opts.log.error(`could not remove ${tmp}: ${(err as Error).message}; remove it by hand (btrfs subvolume delete, then rm -r)`);
    }
  }

  /** Releases the locks (the chain's first), whatever happened. */
  async release(): Promise<void> {
    await this.chainLock?.release();
    await this.lock?.release();
  }
}

/** Whether the LXC dir, which must be a directory, is on BTRFS (where receive restores; elsewhere the replay does). */
export async function lxcDirOnBtrfs(lxcDir: string): Promise<boolean> {
  let onBtrfs: boolean;
  try {
    if (!(await stat(lxcDir)).isDirectory()) throw new SbkError(`LXC directory ${lxcDir} is not a directory`, ExitCode.failure);
    onBtrfs = await isOnBtrfs(lxcDir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new SbkError(`LXC directory ${lxcDir} does not exist`, ExitCode.notFound);
    if (code === 'ENOTDIR') throw new SbkError(`LXC directory ${lxcDir}: a part of its path is not a directory`, ExitCode.failure);
    throw describeSystemError(err, `LXC directory ${lxcDir}`) ?? err;
  }
  return onBtrfs;
}

/**
 * Removes the leftovers of every restore in the LXC dir that was killed (its process is
 * gone): those of `name` under its lock, which this run holds (a failure there stops the
 * restore), those of other names each under that name's lock taken without waiting (a name
 * whose lock is busy is skipped: a live restore of it sweeps its own; a failure is a warning).
 */
async function sweep(opts: WorkspaceOptions, name: string): Promise<void> {
  const { lxcDir, log, signal } = opts;
  const dead = new Map<string, string[]>();
  for (const n of await readdir(lxcDir)) {
    const m = RESTORE_TEMP_RE.exec(n);
    if (!m || isProcessAlive(Number(m[2]))) continue;
    try {
      checkContainerName(m[1]!);
    } catch {
      continue; // not a name sbk-unpack restores to: not ours
    }
    dead.set(m[1]!, [...(dead.get(m[1]!) ?? []), n]);
  }
  const own = dead.get(name);
  if (own) await sweepName(opts, name, own);
  for (const [other, dirs] of dead) {
    if (other === name) continue;
    signal.throwIfAborted();
    let lock: Lock;
    try {
      lock = await acquireLock(restoreLockFile(lxcDir, other), { holder: `sbk-unpack (restore of ${name}, removing leftovers of ${other})` });
    } catch (err) {
      log.verbose(`not removing the leftovers of a restore of ${other} now: ${(err as Error).message}`);
      continue;
    }
    try {
      await sweepName(opts, other, dirs);
    } catch (err) {
      const e = describeSystemError(err) ?? (err as Error);
      log.warn(`could not remove the leftovers of a restore of ${other} (${dirs.join(', ')}): ${e.message}`);
    } finally {
      await lock.release();
    }
  }
}

/**
 * Removes the temporary directories `dirs` that dead restores of `name` left. One killed
 * between the two renames of --force holds the replaced container in old/, and nothing is at
 * the target: that is the only copy, put back (as discard() would have) before anything.
 */
async function sweepName(opts: WorkspaceOptions, name: string, dirs: string[]): Promise<void> {
  const { lxcDir, log } = opts;
  const target = path.join(lxcDir, name);
  for (const n of dirs) {
    const dir = path.join(lxcDir, n);
    if (!(await exists(dir))) continue; // another sweep was first
    const old = path.join(dir, 'old');
    if ((await exists(old)) && !(await exists(target))) {
      log.warn(`put ${name} back at ${target} from ${old}, where a restore that did not finish had left it`);
      await rename(old, target);
    }
    log.info(`removing ${dir}, left by a restore that did not finish`);
    await removeTree(dir);
  }
}
