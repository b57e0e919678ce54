// Locks that the kernel releases when their holder dies: a `flock` child process takes an
// exclusive flock(2) on the lock file and holds it for as long as our pipe to it stays open.
// When this process exits or is killed, the pipe closes, the child exits and the lock is gone,
// so no stale lock file ever blocks a run. The file itself stays; it names the last holder.
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { SbkError, ExitCode } from './errors.js';

const CONFLICT = 75;

export interface Lock {
  readonly file: string;
  release(): Promise<void>;
}

export interface LockOptions {
  /** Seconds to wait for the lock; undefined fails at once, Infinity waits for ever. */
  wait?: number;
  /** What holds the lock, for the message another run prints (`sbk-snap c1`). */
  holder: string;
  signal?: AbortSignal;
}

async function describeHolder(file: string): Promise<string> {
  const text = await readFile(file, 'utf8').catch(() => '');
  return text.trim().split('\n')[0] || 'another process';
}

/** Takes the exclusive lock `file`, or fails with ExitCode.locked naming the holder. */
export async function acquireLock(file: string, opts: LockOptions): Promise<Lock> {
  await mkdir(path.dirname(file), { recursive: true });
  const waitArgs = opts.wait === undefined ? ['-n'] : opts.wait === Infinity ? [] : ['-w', String(opts.wait)];
  // -F: flock execs the shell, which execs cat: the process that holds the lock is the one
  // reading our pipe, and it exits at EOF (when we release or die).
  // The signal stops the wait only: once taken, the lock is held until release(), so that a
  // run stopped by a signal still cleans up under it (a cancelSignal would kill the holder).
  opts.signal?.throwIfAborted();
  const child = execa('flock', ['-x', ...waitArgs, '-E', String(CONFLICT), '-F', file, 'sh', '-c', 'echo locked; exec cat >/dev/null'], {
    stdin: 'pipe',
    stdout: 'pipe',
    stderr: 'pipe',
    buffer: false,
  });
  const stopWaiting = () => child.kill();
  opts.signal?.addEventListener('abort', stopWaiting, { once: true });
  const acquired = await new Promise<boolean>((resolve, reject) => {
    child.stdout!.once('data', () => resolve(true));
    child.then(
      () => resolve(false),
      (err: { exitCode?: number; code?: string }) => {
        if (err.exitCode === CONFLICT) resolve(false);
        else if (err.code === 'ENOENT') reject(new SbkError('flock not found: install util-linux', ExitCode.failure));
        else if (opts.signal?.aborted) reject(opts.signal.reason);
        else reject(new SbkError(`cannot lock ${file}: ${String((err as Error).message)}`, ExitCode.failure));
      },
    );
  }).finally(() => opts.signal?.removeEventListener('abort', stopWaiting));
  if (!acquired) {
    const who = await describeHolder(file);
    const waited = opts.wait === undefined ? '' : ` (waited ${opts.wait} s)`;
    throw new SbkError(`${file} is locked by ${who}${waited}; try again later or use --wait`, ExitCode.locked);
  }
  // Holding the lock must never keep this process alive on its own (release() re-refs it, or
  // awaiting the child's exit would let Node exit half-way).
  const handles = [child, child.stdout, child.stderr, child.stdin] as unknown as { ref?: () => void; unref?: () => void }[];
  for (const h of handles) h.unref?.();
  await writeFile(file, `${opts.holder} (pid ${process.pid}, since ${new Date().toISOString()})\n`).catch(() => {});
  let released = false;
  return {
    file,
    async release() {
      if (released) return;
      released = true;
      for (const h of handles) h.ref?.();
      child.stdin!.end();
      await child.catch(() => {});
    },
  };
}

/** Runs `fn` holding the lock; the lock is released however `fn` ends. */
export async function withLock<T>(file: string, opts: LockOptions, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireLock(file, opts);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

/** Lock of a container's backups (snapshot sets, archives, pruning) in a backup dir. */
export const backupLockFile = (backupDir: string, container: string) => path.join(backupDir, '.locks', `${container}.lock`);
/**
 * Lock of the restores of one chain in an LXC dir, named by its container and Full (sanitized:
 * an original-layout archive may be named by its path).
 */
export const chainLockFile = (lxcDir: string, container: string, full: string) => {
  const safe = (s: string) => s.replace(/[^A-Za-z0-9_.+-]/g, '_').slice(0, 120);
  return path.join(lxcDir, '.sbk-locks', 'chains', `${safe(container)}@${safe(path.basename(full))}.lock`);
};
/** Lock of a restore target in an LXC dir. */
export const restoreLockFile = (lxcDir: string, name: string) => path.join(lxcDir, '.sbk-locks', `${name}.lock`);
