// Waiting on conditions instead of fixed sleeps: the test machine is small and shared, so any
// fixed delay is either too short (a flaky test) or wasted time. Each helper polls what the
// test really waits for: a file, a lock, a process's state.
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Resolves once `cond()` is true; throws after `timeoutMs`, naming `what`. */
export async function until(cond: () => boolean | Promise<boolean>, what = 'condition', timeoutMs = 60_000, everyMs = 50): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await pause(everyMs);
  }
}

/** Resolves once `file` exists. */
export async function waitForFile(file: string, timeoutMs = 20_000): Promise<void> {
  await until(() => existsSync(file), `${file} to appear`, timeoutMs);
}

/** Whether `pid` is a live process (or a zombie not yet reaped). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Whether another process holds the flock(1) lock on `file` (a non-blocking probe). */
export async function lockTaken(file: string): Promise<boolean> {
  const probe = await execa('flock', ['-n', '-E', '99', file, 'true'], { reject: false });
  return probe.exitCode === 99;
}

/** The command lines of `pid`'s direct children. */
export async function childCommands(pid: number): Promise<string[]> {
  const r = await execa('pgrep', ['-P', String(pid)], { reject: false });
  const pids = r.stdout.split('\n').filter(Boolean);
  const cmds = await Promise.all(pids.map((p) => readFile(`/proc/${p}/cmdline`, 'utf8').catch(() => '')));
  return cmds.filter(Boolean).map((c) => c.split('\0').join(' ').trim());
}

/**
 * Resolves once sbk's CLI has set its signal handlers: Node itself catches SIGINT/SIGTERM from its
 * start, but SIGPIPE is ignored until a listener is added, which runCli does beside the others.
 */
export async function signalHandlersInstalled(pid: number): Promise<void> {
  const want = 1n << 12n; // SIGPIPE (13) caught
  for (;;) {
    const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
    const m = /^SigCgt:\s*([0-9a-f]+)/m.exec(status);
    if (m && (BigInt(`0x${m[1]}`) & want) === want) return;
    await pause(20);
  }
}
