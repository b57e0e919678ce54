// Locks that the kernel releases when their holder dies: a `flock` child process takes an
// exclusive flock(2) on the lock file and holds it for as long as our pipe to it stays open.
// When this process exits or is killed, the pipe closes, the child exits and the lock is gone,
// so no stale lock file ever blocks a run. The file itself stays; it names the last holder.
// The file is written only after the lock is taken, so it may still name a finished run: the
// busy message names the process the kernel says holds the lock (/proc/locks) instead, by the
// description it carries in its environment.
import { mkdir, readFile, readdir, readlink, realpath, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { SbkError, ExitCode } from '../core/errors.js';
import { isProcessAlive } from './proc.js';

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

/** The environment variable in which the flock child carries its holder's description. */
const HOLDER_ENV = 'SBK_LOCK_HOLDER';

/** Pids of the processes holding a flock on `file` (not the waiters), from /proc/locks. */
async function flockHolders(file: string): Promise<number[]> {
  const [locks, st, real] = await Promise.all([
    readFile('/proc/locks', 'utf8').catch(() => ''),
    stat(file).catch(() => undefined),
    realpath(file).catch(() => file),
  ]);
  if (!st) return [];
  const pids: number[] = [];
  for (const line of locks.split('\n')) {
    // `1: FLOCK  ADVISORY  WRITE 1234 00:2f:5678 0 EOF`; waiters' lines have `->` after the number.
    const f = line.trim().split(/\s+/);
    if (f[1] !== 'FLOCK' || !f[5]) continue;
    const ino = f[5].split(':')[2];
    if (ino !== String(st.ino)) continue;
    const pid = Number(f[4]);
    // The inode number alone may be another file system's: the holder must have this file open.
    const fds = await readdir(`/proc/${pid}/fd`).catch(() => [] as string[]);
    for (const fd of fds) {
      if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')) === real) {
        pids.push(pid);
        break;
      }
    }
  }
  return pids;
}

async function processDescription(pid: number): Promise<string | undefined> {
  const env = await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '');
  const carried = env.split('\0').find((e) => e.startsWith(`${HOLDER_ENV}=`));
  if (carried) return carried.slice(HOLDER_ENV.length + 1);
  const cmd = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').filter(Boolean).join(' ');
  return cmd ? `pid ${pid} (${cmd})` : undefined;
}

const recordPid = (record: string) => Number(/\(pid (\d+)\b/.exec(record)?.[1] ?? NaN);

/**
 * Who holds the lock now: the live holder's own description; the record in the file only when
 * it is that holder's (it adds since when), or, without /proc, when its process is alive.
 */
async function describeHolder(file: string): Promise<string> {
  const text = await readFile(file, 'utf8').catch(() => '');
  const record = text.trim().split('\n')[0] ?? '';
  const holders = await flockHolders(file);
  for (const pid of holders) {
    const live = await processDescription(pid);
    if (!live) continue;
    if (record && recordPid(record) === recordPid(live)) return record;
    return live;
  }
  if (record && holders.length === 0 && isProcessAlive(recordPid(record))) return record;
  return 'another process';
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
    env: { [HOLDER_ENV]: `${opts.holder} (pid ${process.pid})` },
  });
  const stopWaiting = () => child.kill();
  if (opts.signal?.aborted) stopWaiting();
  else opts.signal?.addEventListener('abort', stopWaiting, { once: true });
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

// The lock files' names and places are in core/layout.ts, with every other on-disk name.
export { backupLockFile, chainLockFile, restoreLockFile } from '../core/layout.js';
