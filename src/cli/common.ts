// What every sbk binary shares: common options, logging, signals, broken pipes, exit codes.
// Each src/cli/<verb>.ts only declares its options and wires streams to its stage
// (src/stages/<verb>); src/cli/verbs.ts lists the verbs.
// yargs is loaded only to parse a real run: `--help` and `--version` answer without it (help.ts).
import type { Argv } from 'yargs';
import { readFileSync } from 'node:fs';
import { ExitCode, SbkError, describeSystemError, isBrokenPipe } from '../core/errors.js';
import { Log } from '../core/log.js';
import { waitForDrain } from '../core/streams.js';
import { resolveDirs, type Dirs } from '../core/layout.js';

export interface CommonArgs {
  lxcDir?: string;
  backupDir?: string;
  quiet?: boolean;
  verbose?: boolean;
}

export interface Context {
  log: Log;
  dirs: Dirs;
  /** Aborted on SIGINT/SIGTERM or when stdout's reader goes away. */
  signal: AbortSignal;
}

export function toolVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

const EPILOG =
  'Exit status: 0 ok, 1 failure, 2 usage, 3 bad input, 4 corrupt data, 5 not found, 6 conflict, 7 locked, 8 restored but not started, 70 bug, 130/143 interrupted, 141 broken pipe.\nSee man sbk(7) for the formats.';

/** The options every binary has, in the order --help lists them (then version, help, the binary's own). */
const COMMON_OPTIONS = [
  ['lxc-dir', { type: 'string', describe: 'LXC containers directory [env SBK_LXC_DIR] (default /var/snap/subutai/common/lxc)' }],
  ['backup-dir', { type: 'string', describe: 'backup directory [env SBK_BACKUP_DIR] (default <lxc-dir>/backups)' }],
  ['quiet', { alias: 'q', type: 'boolean', describe: 'print errors only' }],
  ['verbose', { alias: 'v', type: 'boolean', describe: 'print more detail' }],
] as const;

const helpWidth = () => Math.min(100, process.stderr.columns || 100);

/** The help text as yargs would print it, made without yargs; undefined if only yargs can (help.ts). */
export async function helpWithoutYargs<A>(spec: CliSpec<A>, width = helpWidth()): Promise<string | undefined> {
  const { recordOptions, renderHelp } = await import('./help.js');
  const rec = recordOptions(spec.options as never);
  if (rec.unsupported) return undefined;
  return renderHelp({
    name: spec.name,
    usage: spec.usage,
    epilog: EPILOG,
    width,
    options: [
      ...COMMON_OPTIONS.map(([k, o]) => [k, { ...o }] as [string, object]),
      ['version', { type: 'boolean', describe: 'Show version number' }],
      ['help', { alias: 'h', type: 'boolean', describe: 'Show help' }],
      ...rec.options,
    ],
  });
}

/** The yargs parser of a binary (loads yargs). */
async function buildParser<A>(spec: CliSpec<A>, argv: string[], width = helpWidth()) {
  const { default: yargs } = await import('yargs');
  return spec.options(
    COMMON_OPTIONS.reduce((y, [key, o]) => y.option(key, { ...o }), yargs(argv).scriptName(spec.name).usage(spec.usage))
      .strictOptions()
      .version(toolVersion())
      .help()
      .alias('help', 'h')
      .epilog(EPILOG)
      .wrap(width) as unknown as Argv<CommonArgs>,
  );
}

/** The help text yargs prints (for the test that holds helpWithoutYargs to it). */
export async function helpWithYargs<A>(spec: CliSpec<A>, width = helpWidth()): Promise<string> {
  return (await buildParser(spec, [], width)).getHelp();
}

/**
 * `--help` (or `-h`) and `--version` without loading yargs, when the options can be laid out
 * here exactly as yargs would; true when answered.
 */
async function answerWithoutYargs<A>(spec: CliSpec<A>, argv: string[]): Promise<boolean> {
  const end = argv.indexOf('--');
  const flags = end < 0 ? argv : argv.slice(0, end);
  if (flags.includes('--help') || flags.includes('-h')) {
    const text = await helpWithoutYargs(spec);
    if (text === undefined) return false;
    process.stdout.write(text + '\n');
    return true;
  }
  if (flags.includes('--version')) {
    process.stdout.write(toolVersion() + '\n');
    return true;
  }
  return false;
}

export interface CliSpec<A> {
  name: string;
  usage: string;
  /** Declares the verb's own options on top of the common ones. */
  options: (y: Argv<CommonArgs>) => Argv<A>;
  run: (args: A & CommonArgs & { _: (string | number)[] }, ctx: Context) => Promise<void | number>;
  /** A reader leaving early (`| head`) is normal for listings: exit 0 quietly then. */
  brokenPipeIsOk?: boolean;
}

/** Why a run stopped early: a signal, or stdout's reader went away. */
export type StopReason = 'signal' | 'pipe' | undefined;

/** How run() ended and what happened around it: all exitCodeFor needs. */
export interface RunEnd {
  /** run() returned (its optional exit code) or threw. */
  outcome: { returned: void | number } | { threw: unknown };
  stopReason: StopReason;
  /** 130 or 143, by the signal that came. */
  signalExit: number;
  brokenPipeIsOk: boolean;
  /** A stdout error (not a broken pipe) seen while run() went. */
  stdoutError?: Error;
}

/** The exit status of a run and the messages to print first; `code` undefined: leave it as is. */
export interface Verdict {
  code?: number;
  messages: string[];
}

const BROKEN_PIPE_MESSAGE = 'the reader of stdout went away (broken pipe)';

/**
 * The one mapping from how a run ended to its exit status (man sbk(7), EXIT STATUS). A stop
 * (signal, lost reader) wins over what run() did because of it; then a stdout error seen on the
 * way; then run()'s own code or error.
 */
export function exitCodeFor(end: RunEnd): Verdict {
  const threw = 'threw' in end.outcome;
  const err = threw ? (end.outcome as { threw: unknown }).threw : undefined;
  switch (end.stopReason) {
    case 'signal':
      return { code: end.signalExit, messages: [] };
    case 'pipe':
      if (!end.brokenPipeIsOk) return { code: ExitCode.brokenPipe, messages: [BROKEN_PIPE_MESSAGE] };
      // A listing whose reader left: fine, unless stdout failed otherwise too.
      if (threw) return { code: ExitCode.ok, messages: [] };
      break;
  }
  // The stdout error is said unless run() threw that very error (then it is said once, below).
  const messages = end.stdoutError && end.stdoutError !== err ? [`stdout: ${end.stdoutError.message}`] : [];
  if (!threw) {
    if (end.stdoutError) return { code: ExitCode.failure, messages };
    const code = (end.outcome as { returned: void | number }).returned;
    return { code: typeof code === 'number' ? code : undefined, messages };
  }
  if (err instanceof SbkError && err.exitCode === ExitCode.brokenPipe && end.brokenPipeIsOk) return { code: ExitCode.ok, messages };
  if (err instanceof SbkError) return { code: err.exitCode, messages: [...messages, err.message] };
  if (isBrokenPipe(err) && end.brokenPipeIsOk) return { code: ExitCode.ok, messages };
  const sys = describeSystemError(err);
  if (sys) return { code: sys.exitCode, messages: [...messages, sys.message] };
  return {
    code: ExitCode.bug,
    messages: [...messages, `internal error (a bug: please report it):\n${(err as Error)?.stack ?? String(err)}`],
  };
}

/** What the handlers runCli installs have seen so far. */
interface RunState {
  controller: AbortController;
  stopReason: StopReason;
  signalExit: number;
  /** While run() is going: an error stdout emitted then is kept for the verdict. */
  running: boolean;
  stdoutError?: Error;
  detach: () => void;
}

/** SIGINT/SIGTERM abort the run (a second one exits at once); a broken stdout aborts it too. */
function installHandlers(log: Log): RunState {
  const state: RunState = { controller: new AbortController(), stopReason: undefined, signalExit: ExitCode.interrupted, running: false, detach: () => {} };
  const { controller } = state;
  const onSignal = (sig: NodeJS.Signals) => {
    if (controller.signal.aborted) {
      // A second signal: the user wants out now.
      process.exit(sig === 'SIGINT' ? ExitCode.interrupted : ExitCode.terminated);
    }
    state.stopReason = 'signal';
    state.signalExit = sig === 'SIGINT' ? ExitCode.interrupted : ExitCode.terminated;
    log.error(`${sig === 'SIGINT' ? 'interrupted' : 'terminated'}, cleaning up`);
    controller.abort(new SbkError(`${sig}`, state.signalExit as 130 | 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGPIPE', () => {}); // handled as EPIPE on the stream
  process.stdout.on('error', (err) => {
    if (isBrokenPipe(err)) {
      if (!controller.signal.aborted) {
        state.stopReason = 'pipe';
        controller.abort(new SbkError(BROKEN_PIPE_MESSAGE, ExitCode.brokenPipe));
      }
      return;
    }
    process.exitCode = ExitCode.failure;
    // While run() is going, a pipeline that failed passes its error (any error: a missing
    // directory, a full disk) on to stdout too: keep it, and report it when run() ends unless
    // run() reports that same error itself.
    if (state.running) state.stdoutError ??= err;
    else log.error(`stdout: ${err.message}`);
  });
  state.detach = () => {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  };
  return state;
}

type Args<A> = A & CommonArgs & { _: (string | number)[] };

/** Parses argv with yargs; undefined when it printed help or version, or refused the command line. */
async function parseArgs<A>(spec: CliSpec<A>, argv: string[], log: Log): Promise<Args<A> | undefined> {
  const parser = (await buildParser(spec, argv)).fail((msg, err) => {
    throw err instanceof SbkError ? err : new SbkError(msg || err?.message || 'bad usage', ExitCode.usage);
  });
  let args: Args<A>;
  try {
    args = (await parser.parseAsync()) as Args<A>;
  } catch (err) {
    const e = err instanceof SbkError ? err : new SbkError(String((err as Error)?.message ?? err), ExitCode.usage);
    log.error(e.message);
    process.stderr.write(`Try '${spec.name} --help'.\n`);
    process.exitCode = e.exitCode;
    return undefined;
  }
  if ((args as { help?: boolean }).help || (args as { version?: boolean }).version) return undefined;
  return args;
}

/** Runs one binary: parses argv, installs signal and pipe handling, maps errors to exit codes. */
export async function runCli<A>(spec: CliSpec<A>, argv: string[]): Promise<void> {
  if (await answerWithoutYargs(spec, argv)) return;
  const log = new Log(spec.name);
  const state = installHandlers(log);
  const args = await parseArgs(spec, argv, log);
  if (!args) return;
  log.verbosity = args.quiet ? 0 : args.verbose ? 2 : 1;
  // If the event loop drains while run() is still pending (an await that can never settle),
  // Node would exit with status 0 half-way: never report that as a success.
  let settled = false;
  const unsettled = () => {
    if (settled) return;
    log.error('internal error (a bug: please report it): stopped before the work was done');
    process.exitCode = ExitCode.bug;
  };
  process.once('beforeExit', unsettled);
  let outcome: RunEnd['outcome'];
  try {
    const dirs = resolveDirs({ lxcDir: args.lxcDir, backupDir: args.backupDir });
    state.running = true;
    // A signal that came while the options were parsed: stop before any work (the waits in
    // run() listen for the abort event, which an already aborted signal never fires).
    state.controller.signal.throwIfAborted();
    outcome = { returned: await spec.run(args, { log, dirs, signal: state.controller.signal }) };
  } catch (err) {
    outcome = { threw: err };
  } finally {
    state.running = false;
  }
  try {
    const verdict = exitCodeFor({ outcome, stopReason: state.stopReason, signalExit: state.signalExit, brokenPipeIsOk: !!spec.brokenPipeIsOk, stdoutError: state.stdoutError });
    for (const m of verdict.messages) log.error(m);
    if (verdict.code !== undefined) process.exitCode = verdict.code;
  } finally {
    settled = true;
    process.off('beforeExit', unsettled);
    state.detach();
  }
}

/** Refuses to write binary data to a terminal, as gzip does. */
export function refuseBinaryToTerminal(prog: string, what: string): void {
  if (process.stdout.isTTY) {
    throw new SbkError(
      `refusing to write ${what} to a terminal; redirect stdout to a file or pipe it into the next stage`,
      ExitCode.usage,
    );
  }
  void prog;
}

/** Writes to stdout honouring backpressure; waiting for a slow reader stops when `signal` aborts. */
export async function writeOut(chunk: string | Uint8Array, signal?: AbortSignal): Promise<void> {
  if (process.stdout.write(chunk)) return;
  try {
    await waitForDrain(process.stdout, { signal, closedError: () => Object.assign(new Error('stdout closed'), { code: 'EPIPE' }) });
  } catch (err) {
    // Said as the lost reader it is, also when this rejection outruns the 'error' event that
    // tells runCli so.
    throw isBrokenPipe(err) ? new SbkError(BROKEN_PIPE_MESSAGE, ExitCode.brokenPipe, { cause: err }) : err;
  }
}

/** `--wait[=SECONDS]`: wait for a lock another run holds (for ever without a number). */
export const WAIT_OPTION = {
  type: 'string',
  describe: 'wait for a lock held by another run (for ever, or at most SECONDS) instead of failing with exit 7',
} as const;

export function parseWait(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  if (v === '') return Infinity;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new SbkError(`--wait takes a number of seconds, not '${v}'`, ExitCode.usage);
  return n;
}

/** `--s3-endpoint URL` and `--s3-ca FILE` of the stages that read or write an `s3://` store. */
export const S3_ENDPOINT_OPTION = {
  type: 'string',
  describe: 'the S3-compatible server of s3:// locations (path-style) [env SBK_S3_ENDPOINT, AWS_ENDPOINT_URL_S3] (default: AWS S3)',
} as const;
export const S3_CA_OPTION = { type: 'string', describe: "a PEM file with the CA of the S3 server's TLS certificate [env SBK_S3_CA, AWS_CA_BUNDLE]" } as const;

/** `--progress` / `--no-progress` of the long stages (sbk-send, sbk-pack, sbk-unpack). */
export const PROGRESS_OPTION = {
  type: 'boolean',
  describe:
    'progress on stderr: a status line redrawn in place when stderr is a terminal and this is the last stage of the pipe (the default there), else one line per volume or archive; --no-progress: none',
} as const;

/**
 * The progress reporter of a stage, by the rule of sbk(7) PERFORMANCE: never with -q or
 * --no-progress; a redrawn status line only on a terminal and only in the last stage of a pipe
 * (`last`: stdout is not a pipe, unless the caller knows better); else one line per task with
 * --progress.
 */
export async function makeProgress(ctx: Context, flag: boolean | undefined, opts: { last?: boolean } = {}) {
  const { Progress, chooseProgressMode, stdoutIsPipe } = await import('../core/progress.js');
  const stderrIsTTY = process.stderr.isTTY === true;
  const mode = chooseProgressMode({ flag, quiet: ctx.log.verbosity === 0, stderrIsTTY, last: opts.last ?? !stdoutIsPipe() });
  const progress = new Progress({ prog: ctx.log.prog, mode, clearFirst: stderrIsTTY });
  // However the run ends, no half-drawn status line is left behind. With -v: what it cost.
  if (progress.enabled)
    process.once('exit', () => {
      progress.close();
      ctx.log.verbose(`progress: ${progress.draws} redraws, ${progress.spentMs.toFixed(1)} ms drawing`);
    });
  return progress;
}
