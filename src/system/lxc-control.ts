// Acting on a running LXC container: stopping and starting it (lxc-stop, lxc-start; a start
// guard starts it again if this process dies while it is stopped), flushing its volumes, and
// freezing it for an instant (lxc-freeze, which uses the freezer cgroup, v1 or v2). A freeze is
// done by a watchdog: a small shell, in a session of its own, that freezes the
// container, waits for one line on a pipe from this process, and thaws it when the line comes,
// when the pipe closes (this process exited or was killed, even by SIGKILL) or when a backstop
// time has passed. So a container is never left frozen by sbk, whatever happens to sbk: the
// thaw does not depend on this process being alive, as a lock's holder does not (lock.ts).
import { spawn } from 'node:child_process';
import { execa } from 'execa';
import { SbkError, ExitCode } from '../core/errors.js';
import type { Log } from '../core/log.js';

const DEFAULT_TIMEOUT_S = 60;

/** Runs one LXC tool; a missing one is a clear error. */
async function lxcTool(tool: string, args: string[], timeoutS: number) {
  const r = await execa(tool, args, {
    reject: false,
    stdin: 'ignore',
    encoding: 'utf8',
    timeout: timeoutS * 1000,
    env: { LC_ALL: 'C' },
  });
  if ((r as { code?: string }).code === 'ENOENT') throw new SbkError(`${tool} not found: install lxc`, ExitCode.failure);
  return r;
}

/** lxc-info's one-word state of a container, or undefined when it cannot say. */
async function stateOf(lxcDir: string, name: string): Promise<string | undefined> {
  const r = await lxcTool('lxc-info', ['-P', lxcDir, '-n', name, '-s', '-H'], 30);
  return r.exitCode === 0 ? r.stdout.trim().split('\n').pop()!.trim() : undefined;
}

const lastLine = (text: string) => text.trim().split('\n').pop()?.trim() ?? '';

/**
 * Stops container `name` of `lxcDir` cleanly (its init is asked to shut down; `timeoutS`, default
 * 60), then by force (`lxc-stop -k`) if it is still up; resolves once it is STOPPED (also when it
 * was not running), throws an SbkError otherwise.
 */
export async function stopContainer(lxcDir: string, name: string, opts: { timeoutS?: number; log?: Log } = {}): Promise<void> {
  const timeoutS = opts.timeoutS ?? DEFAULT_TIMEOUT_S;
  opts.log?.verbose(`${name}: stopping it (lxc-stop, up to ${timeoutS} s)`);
  // lxc-stop exits 2 when the container is not running: nothing to do.
  const clean = await lxcTool('lxc-stop', ['-P', lxcDir, '-n', name, '-t', String(timeoutS)], timeoutS + 30);
  if (clean.exitCode !== 0 && (await stateOf(lxcDir, name)) !== 'STOPPED') {
    opts.log?.warn(`${name} did not stop within ${timeoutS} s: killing it (lxc-stop -k)`);
    await lxcTool('lxc-stop', ['-P', lxcDir, '-n', name, '-k'], 60);
  }
  const waited = await lxcTool('lxc-wait', ['-P', lxcDir, '-n', name, '-s', 'STOPPED', '-t', '30'], 60);
  if (waited.exitCode !== 0) {
    const why = lastLine(clean.stderr) || lastLine(waited.stderr) || `it is ${(await stateOf(lxcDir, name)) ?? 'in an unknown state'}`;
    throw new SbkError(`could not stop container ${name} (lxc-stop -P ${lxcDir} -n ${name}): ${why}`, ExitCode.failure);
  }
}

/**
 * Starts container `name` of `lxcDir` (`lxc-start`, in the background) and resolves once LXC
 * reports it RUNNING (within `timeoutS`, default 60); throws an SbkError otherwise.
 */
export async function startContainer(lxcDir: string, name: string, opts: { timeoutS?: number; log?: Log } = {}): Promise<void> {
  const timeoutS = opts.timeoutS ?? DEFAULT_TIMEOUT_S;
  opts.log?.verbose(`${name}: starting it (lxc-start)`);
  const started = await lxcTool('lxc-start', ['-P', lxcDir, '-n', name], timeoutS + 30);
  if (started.exitCode === 0) await lxcTool('lxc-wait', ['-P', lxcDir, '-n', name, '-s', 'RUNNING', '-t', String(timeoutS)], timeoutS + 30);
  // RUNNING is what is asked, also when it ran already (lxc-start then refuses).
  const state = await stateOf(lxcDir, name);
  if (state === 'RUNNING') return;
  const why = lastLine(started.stderr) || `it is ${state ?? 'in an unknown state'}`;
  throw new SbkError(`could not start container ${name} (lxc-start -P ${lxcDir} -n ${name}): ${why}`, ExitCode.failure);
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
