// Stopping and starting an LXC container (lxc-stop, lxc-start, lxc-wait): sbk-unpack --stop
// stops the container it replaces and --start starts the restored one. A stop is clean first
// (lxc-stop with a timeout: the container's halt signal), then forced (lxc-stop -k); a start
// resolves only once LXC reports the container RUNNING, and otherwise says why LXC did not start
// it (the first ERROR line of lxc-start's log).
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { SbkError, ExitCode } from '../core/errors.js';
import type { Log } from '../core/log.js';
import { lxcContainerState } from './lxc.js';

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
