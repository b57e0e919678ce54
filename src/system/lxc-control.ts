// Acting on an LXC container: stopping and starting it (lxc-stop, lxc-start, lxc-wait), flushing
// its volumes, and freezing it for an instant. sbk-unpack --stop stops the container it replaces
// and --start starts the restored one; sbk-snap --stop stops one for its snapshots (a start guard
// starts it again if sbk-snap dies while it is stopped) and by default freezes a running one. A
// stop is clean first (lxc-stop with a timeout: the container's halt signal), then forced
// (lxc-stop -k); a start resolves only once LXC reports the container RUNNING, and otherwise says
// why LXC did not start it (the first ERROR line of lxc-start's log). A freeze is done by a
// watchdog: a small shell, in a session of its own, that freezes the container (lxc-freeze: the
// freezer cgroup, v1 or v2), waits for one line on a pipe from this process, and thaws it when the
// line comes, when the pipe closes (this process exited or was killed, even by SIGKILL) or when a
// backstop time has passed. So a container is never left frozen by sbk, whatever happens to sbk:
// the thaw does not depend on this process being alive, as a lock's holder does not (lock.ts).
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { SbkError, ExitCode } from '../core/errors.js';
import type { Log } from '../core/log.js';
import { lxcContainerState } from './lxc.js';

const lastLine = (text: string) => text.trim().split('\n').pop()?.trim() ?? '';

export interface LxcControlOptions {
  /** Seconds a clean stop may take before it is forced; seconds a start may take to reach RUNNING. */
  timeoutS?: number;
  log?: Log;
}

const STOP_TIMEOUT_S = 30;
const START_TIMEOUT_S = 60;
/** What lxc-wait itself may take past the time it waits (a slow, busy host). */
const SLACK_MS = 30_000;

const run = (cmd: string, args: string[], timeoutMs: number) =>
  execa(cmd, args, { stdin: 'ignore', reject: false, encoding: 'utf8', timeout: timeoutMs, env: { LC_ALL: 'C' } });

type Run = Awaited<ReturnType<typeof run>>;

/** A tool that is not installed: said as such, not as a failed container. */
function requireTool(r: Run, tool: string): void {
  if ((r as { code?: string }).code === 'ENOENT')
    throw new SbkError(`${tool} is not installed (apt-get install lxc)`, ExitCode.failure);
}

/** The last line of a tool's stderr, without LXC's `tool: name: file: function: line` prefix. */
function lastError(r: Run): string {
  const line = r.stderr.trim().split('\n').pop() ?? '';
  return line.replace(/^lxc-\w+: [^:]*: [^:]*: \w+: \d+ /, '').trim() || `exit ${r.exitCode}`;
}

/**
 * Stops container `name` of `lxcDir` and resolves once LXC reports it STOPPED: lxc-stop with a
 * timeout (the container's halt signal; a clean shutdown), then lxc-stop -k. Nothing to do for a
 * container that is not running. Throws an SbkError when it is still not stopped.
 */
export async function stopContainer(lxcDir: string, name: string, opts: LxcControlOptions = {}): Promise<void> {
  const timeoutS = opts.timeoutS ?? STOP_TIMEOUT_S;
  const state = await lxcContainerState(lxcDir, name);
  if (state === undefined || state.state === 'STOPPED') return;
  // The LXC path under which LXC knows it (it may have been started through a symlink).
  const P = state.lxcPath;
  const where = `-P ${P} -n ${name}`;
  if (state.state === 'FROZEN' || state.state === 'FREEZING') {
    // A frozen container cannot run its halt handler: thaw it first.
    requireTool(await run('lxc-unfreeze', ['-P', P, '-n', name], SLACK_MS), 'lxc-unfreeze');
  }
  opts.log?.info(`stopping container ${name} (lxc-stop ${where} -t ${timeoutS})`);
  // --nokill: lxc-stop would kill it after the timeout in silence; sbk says so, then kills it.
  const clean = await run('lxc-stop', ['-P', P, '-n', name, '-t', String(timeoutS), '--nokill'], timeoutS * 1000 + SLACK_MS);
  requireTool(clean, 'lxc-stop');
  if ((await lxcContainerState(lxcDir, name))?.state !== 'STOPPED') {
    opts.log?.warn(`container ${name} did not stop within ${timeoutS} s: killing it (lxc-stop ${where} -k)`);
    await run('lxc-stop', ['-P', P, '-n', name, '-k'], SLACK_MS);
    await run('lxc-wait', ['-P', P, '-n', name, '-s', 'STOPPED', '-t', String(timeoutS)], timeoutS * 1000 + SLACK_MS);
  }
  const after = await lxcContainerState(lxcDir, name);
  if (after !== undefined && after.state !== 'STOPPED')
    throw new SbkError(`container ${name} could not be stopped (it is ${after.state}; lxc-stop ${where} -k did not stop it)`, ExitCode.failure);
  opts.log?.verbose(`container ${name} is STOPPED`);
}

/** The reason in the first ERROR line of an lxc-start log (`… ERROR start - file:fn:line - why`). */
export function startFailureReason(logText: string): string | undefined {
  for (const line of logText.split('\n')) {
    const m = /\sERROR\s+\S+ - \S+ - (.*)$/.exec(line);
    if (m) return m[1]!.trim();
  }
  return undefined;
}

/**
 * Starts container `name` of `lxcDir` (lxc-start, daemonized) and resolves once LXC reports it
 * RUNNING. Throws an SbkError (exit 1) saying why when LXC did not start it or it stopped again
 * before it ran. A container already RUNNING is left as it is.
 */
export async function startContainer(lxcDir: string, name: string, opts: LxcControlOptions = {}): Promise<void> {
  const timeoutS = opts.timeoutS ?? START_TIMEOUT_S;
  const before = await lxcContainerState(lxcDir, name);
  if (before?.state === 'RUNNING') return;
  const where = `-P ${lxcDir} -n ${name}`;
  opts.log?.verbose(`starting container ${name} (lxc-start ${where})`);
  // lxc-start's own log, for the reason of a failure (its stderr only says "failed to start").
  const logDir = await mkdtemp(path.join(os.tmpdir(), 'sbk-lxc-start-'));
  const logFile = path.join(logDir, 'lxc-start.log');
  try {
    const r = await run('lxc-start', ['-P', lxcDir, '-n', name, '-o', logFile, '-l', 'ERROR'], timeoutS * 1000 + SLACK_MS);
    requireTool(r, 'lxc-start');
    const why = async () => startFailureReason(await readFile(logFile, 'utf8').catch(() => '')) ?? lastError(r);
    if (r.exitCode !== 0) throw new SbkError(`container ${name} did not start: ${await why()}`, ExitCode.failure);
    // Daemonized, lxc-start returns once the container runs; its init may still die at once.
    await run('lxc-wait', ['-P', lxcDir, '-n', name, '-s', 'RUNNING|STOPPED', '-t', String(timeoutS)], timeoutS * 1000 + SLACK_MS);
    const state = (await lxcContainerState(lxcDir, name))?.state ?? 'unknown to LXC';
    if (state !== 'RUNNING') throw new SbkError(`container ${name} did not start: it is ${state} (${await why()})`, ExitCode.failure);
  } finally {
    await rm(logDir, { recursive: true, force: true });
  }
  opts.log?.verbose(`container ${name} is RUNNING`);
}

/**
 * Writes out what the file systems of `paths` hold in memory (syncfs(2) of each: `sync -f`), so
 * that the snapshots taken right after, under a freeze, have little left to flush.
 */
export async function flushFilesystems(paths: string[], signal?: AbortSignal): Promise<void> {
  const r = await execa('sync', ['-f', ...paths], { reject: false, stdin: 'ignore', encoding: 'utf8', cancelSignal: signal });
  signal?.throwIfAborted();
  if (r.exitCode !== 0) throw new SbkError(`could not flush ${paths.join(', ')}: ${lastLine(r.stderr) || `sync exit ${r.exitCode}`}`, ExitCode.failure);
}

/**
 * The start guard of a stop (`$1` lxc path, `$2` name): waits for one line on stdin; unless it is
 * `done`, this process went away with the container stopped or stopping, and the guard starts it
 * again once it is STOPPED (waiting at most `$3` s, for an lxc-stop left running).
 */
const START_GUARD = `trap '' INT TERM HUP PIPE QUIT
IFS= read -r said
[ "$said" = done ] && exit 0
lxc-wait -P "$1" -n "$2" -s STOPPED -t "$3" >/dev/null 2>&1 && lxc-start -P "$1" -n "$2"
`;

/**
 * Guards a stop of container `name` against this process's death: until `disarm()`, a
 * process in a session of its own holds a pipe from this one, and if the pipe closes without
 * `done` (this process was killed, even by SIGKILL), it starts the container again once it is
 * STOPPED. Resolves once the guard runs.
 */
export async function guardRestart(lxcDir: string, name: string, waitS: number): Promise<{ disarm(): Promise<void> }> {
  const guard = spawn('sh', ['-c', START_GUARD, 'sbk-snap-start-guard', lxcDir, name, String(Math.ceil(waitS))], {
    detached: true,
    stdio: ['pipe', 'ignore', 'ignore'],
    env: { ...process.env, LC_ALL: 'C' },
  });
  guard.stdin.on('error', () => {});
  const exited = new Promise<void>((resolve) => {
    guard.on('error', () => resolve());
    guard.on('close', () => resolve());
  });
  await new Promise<void>((resolve, reject) => {
    guard.once('spawn', resolve);
    guard.once('error', (err) => reject(new SbkError(`cannot guard the stop of ${name}: ${err.message}`, ExitCode.failure)));
  });
  return {
    async disarm() {
      if (guard.stdin.writable) guard.stdin.end('done\n');
      await exited;
    },
  };
}

/**
 * The watchdog: freezes ($1 lxc path, $2 name; lxc-freeze given at most $3 s), says `frozen`,
 * waits for one line on stdin (at most $4 s: the backstop if this process hangs), thaws, says
 * `thawed`. Exit 0 when told `thaw`; 3 the freeze failed (thawed all the same: a freeze cut
 * short may have frozen part of it); 4 the thaw failed; 5 thawed because the pipe closed or the
 * backstop passed. It ignores the terminal's signals (it is in its own session, too): only the
 * pipe ends its wait.
 */
const WATCHDOG = `trap '' INT TERM HUP PIPE QUIT
if timeout -s KILL "$3" lxc-freeze -P "$1" -n "$2"; then
  echo frozen
  said=$(timeout -s KILL "$4" head -n 1)
else
  said=failed
fi
n=0
until lxc-unfreeze -P "$1" -n "$2"; do
  n=$((n + 1)); [ "$n" -lt 10 ] || exit 4; sleep 0.1
done
echo thawed
case "$said" in thaw) exit 0 ;; failed) exit 3 ;; *) echo "container $2 thawed by sbk-snap's watchdog (sbk-snap went away, or took too long)" >&2; exit 5 ;; esac
`;

/** Seconds the watchdog waits past the freeze limit before it thaws on its own (this process hangs). */
const BACKSTOP_GRACE_S = 2;

/** The watchdog of one freeze: what it said, its pipe, its end. */
interface Watchdog {
  /** Resolves true once it said `line`, false when it ended without saying it. */
  said(line: 'frozen' | 'thawed'): Promise<boolean>;
  /** Closes its stdin, with `word` as the line it waits for (none: it thaws as when we die). */
  release(word?: 'thaw'): void;
  /** Its exit status (-1: it could not run, or was killed). */
  exited: Promise<number>;
  /** The last line of its stderr (lxc-freeze's or lxc-unfreeze's complaint). */
  complaint(): string;
}

function startWatchdog(lxcDir: string, name: string, backstopS: number): Watchdog {
  const dog = spawn('sh', ['-c', WATCHDOG, 'sbk-snap-watchdog', lxcDir, name, String(backstopS), String(backstopS)], {
    detached: true,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, LC_ALL: 'C' },
  });
  let out = '';
  let stderr = '';
  const wake = new Set<() => void>();
  dog.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
    wake.forEach((w) => w());
  });
  dog.stderr.setEncoding('utf8').on('data', (d: string) => {
    if (stderr.length < 4000) stderr += d;
  });
  dog.stdin.on('error', () => {}); // it has ended: its exit status says why
  const exited = new Promise<number>((resolve) => {
    dog.on('error', () => resolve(-1));
    dog.on('close', (code) => resolve(code ?? -1));
  });
  const has = (line: string) => out.split('\n').slice(0, -1).includes(line);
  return {
    said: (line) =>
      new Promise<boolean>((resolve) => {
        const check = () => {
          if (!has(line)) return;
          wake.delete(check);
          resolve(true);
        };
        wake.add(check);
        check();
        // On 'close' every byte of stdout has been read.
        void exited.then(() => (wake.delete(check), resolve(has(line))));
      }),
    release(word) {
      if (dog.stdin.writable) dog.stdin.end(word ? `${word}\n` : undefined);
    },
    exited,
    complaint: () => lastLine(stderr),
  };
}

export interface FreezeOptions {
  /** The longest the container may stay frozen, freezing included; then it is thawed and `timeoutError()` thrown. */
  timeoutS: number;
  timeoutError: () => SbkError;
  log?: Log;
  signal?: AbortSignal;
}

/**
 * Freezes container `name` of `lxcDir` (the LXC path it runs under), runs `fn` while it is frozen
 * and thaws it however `fn` ends. `fn`'s signal aborts when `opts.signal` does or when the freeze
 * lasts past `opts.timeoutS`; then the container is thawed at once and `opts.timeoutError()` is
 * thrown. Returns `fn`'s value and how long the container was frozen (ms, from the freeze done
 * to the thaw done). A thaw that fails is an error naming the command that thaws it by hand.
 */
export async function withContainerFrozen<T>(
  lxcDir: string,
  name: string,
  opts: FreezeOptions,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<{ value: T; frozenMs: number }> {
  opts.signal?.throwIfAborted();
  const limit = new AbortController();
  const signal = opts.signal ? AbortSignal.any([opts.signal, limit.signal]) : limit.signal;
  const dog = startWatchdog(lxcDir, name, Math.ceil(opts.timeoutS) + BACKSTOP_GRACE_S);
  const started = Date.now();
  const timer = setTimeout(() => {
    limit.abort(opts.timeoutError());
    dog.release(); // it thaws at once (or right after the freeze it is in)
  }, opts.timeoutS * 1000);
  const onAbort = () => dog.release();
  signal.addEventListener('abort', onAbort, { once: true });
  let frozen = false;
  try {
    frozen = await dog.said('frozen');
    if (!frozen) {
      signal.throwIfAborted();
      const why = dog.complaint() || `watchdog exit ${await dog.exited}`;
      throw new SbkError(`could not freeze container ${name} (lxc-freeze -P ${lxcDir} -n ${name}): ${why}`, ExitCode.failure);
    }
    const frozenAt = Date.now();
    opts.log?.verbose(`${name}: frozen (in ${frozenAt - started} ms)`);
    signal.throwIfAborted();
    let value: T;
    try {
      value = await fn(signal);
    } finally {
      dog.release('thaw');
      await dog.said('thawed');
    }
    const frozenMs = Date.now() - frozenAt;
    signal.throwIfAborted(); // past the limit, even if the snapshots were done by then
    return { value, frozenMs };
  } catch (err) {
    // The limit's message rather than what it cut short (a killed btrfs).
    throw limit.signal.aborted && !opts.signal?.aborted ? limit.signal.reason : err;
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', onAbort);
    dog.release();
    const code = await dog.exited;
    const thawed = await dog.said('thawed');
    if (code === 4 || (frozen && !thawed)) {
      const why = dog.complaint() || `watchdog exit ${code}`;
      // A container left frozen outweighs any other failure.
      throw new SbkError(`could not thaw container ${name}: ${why}; thaw it by hand: lxc-unfreeze -P ${lxcDir} -n ${name}`, ExitCode.failure);
    }
  }
}
