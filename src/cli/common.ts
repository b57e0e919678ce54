// What every sbk binary shares: common options, logging, signals, broken pipes, exit codes.
// Each src/cli/<verb>.ts only declares its options and wires streams to src/lib.
// yargs is loaded only to parse a real run: `--help` and `--version` answer without it (help.ts).
import type { Argv } from 'yargs';
import { readFileSync } from 'node:fs';
import { ExitCode, SbkError, describeSystemError, isBrokenPipe } from '../core/errors.js';
import { Log, type Verbosity } from '../core/log.js';
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
  'Exit status: 0 ok, 1 failure, 2 usage, 3 bad input, 4 corrupt data, 5 not found, 6 conflict, 7 locked, 70 bug, 130/143 interrupted, 141 broken pipe.\nSee man sbk(7) for the formats.';

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

/** Runs one binary: parses argv, installs signal and pipe handling, maps errors to exit codes. */
export async function runCli<A>(spec: CliSpec<A>, argv: string[]): Promise<void> {
  if (await answerWithoutYargs(spec, argv)) return;
  const log = new Log(spec.name);
  const controller = new AbortController();
  let stopReason: 'signal' | 'pipe' | undefined;
  // While run() is going: an error stdout emitted then.
  let running = false;
  let stdoutError: Error | undefined;
  const reportStdoutError = (unless?: unknown) => {
    if (stdoutError && stdoutError !== unless) log.error(`stdout: ${stdoutError.message}`);
  };
  let signalExit: number = ExitCode.interrupted;
  const onSignal = (sig: NodeJS.Signals) => {
    if (controller.signal.aborted) {
      // A second signal: the user wants out now.
      process.exit(sig === 'SIGINT' ? ExitCode.interrupted : ExitCode.terminated);
    }
    stopReason = 'signal';
    signalExit = sig === 'SIGINT' ? ExitCode.interrupted : ExitCode.terminated;
    log.error(`${sig === 'SIGINT' ? 'interrupted' : 'terminated'}, cleaning up`);
    controller.abort(new SbkError(`${sig}`, signalExit as 130 | 143));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGPIPE', () => {}); // handled as EPIPE on the stream
  process.stdout.on('error', (err) => {
    if (isBrokenPipe(err)) {
      if (!controller.signal.aborted) {
        stopReason = 'pipe';
        controller.abort(new SbkError('the reader of stdout went away (broken pipe)', ExitCode.brokenPipe));
      }
      return;
    }
    process.exitCode = ExitCode.failure;
    // While run() is going, a pipeline that failed passes its error (any error: a missing
    // directory, a full disk) on to stdout too: keep it, and report it when run() ends unless
    // run() reports that same error itself.
    if (running) stdoutError ??= err;
    else log.error(`stdout: ${err.message}`);
  });

  let args: A & CommonArgs & { _: (string | number)[] };
  const parser = (await buildParser(spec, argv)).fail((msg, err) => {
    throw err instanceof SbkError ? err : new SbkError(msg || err?.message || 'bad usage', ExitCode.usage);
  });
  try {
    args = (await parser.parseAsync()) as typeof args;
  } catch (err) {
    const e = err instanceof SbkError ? err : new SbkError(String((err as Error)?.message ?? err), ExitCode.usage);
    log.error(e.message);
    process.stderr.write(`Try '${spec.name} --help'.\n`);
    process.exitCode = e.exitCode;
    return;
  }
  if ((args as { help?: boolean }).help || (args as { version?: boolean }).version) return;

  const verbosity: Verbosity = args.quiet ? 0 : args.verbose ? 2 : 1;
  log.verbosity = verbosity;
  // If the event loop drains while run() is still pending (an await that can never settle),
  // Node would exit with status 0 half-way: never report that as a success.
  let settled = false;
  const unsettled = () => {
    if (settled) return;
    log.error('internal error (a bug: please report it): stopped before the work was done');
    process.exitCode = ExitCode.bug;
  };
  process.once('beforeExit', unsettled);
  try {
    const dirs = resolveDirs({ lxcDir: args.lxcDir, backupDir: args.backupDir });
    running = true;
    // A signal that came while the options were parsed: stop before any work (the waits in
    // run() listen for the abort event, which an already aborted signal never fires).
    controller.signal.throwIfAborted();
    const code = await spec.run(args, { log, dirs, signal: controller.signal });
    running = false;
    if (stopReason === 'pipe' && !spec.brokenPipeIsOk) {
      log.error('the reader of stdout went away (broken pipe)');
      process.exitCode = ExitCode.brokenPipe;
    } else if (stopReason === 'signal') {
      process.exitCode = signalExit;
    } else if (stdoutError) {
      reportStdoutError();
      process.exitCode = ExitCode.failure;
    } else if (typeof code === 'number') process.exitCode = code;
  } catch (err) {
    running = false;
    if (!stopReason) reportStdoutError(err);
    if (stopReason === 'signal') {
      process.exitCode = signalExit;
    } else if (stopReason === 'pipe') {
      if (spec.brokenPipeIsOk) process.exitCode = ExitCode.ok;
      else {
        log.error('the reader of stdout went away (broken pipe)');
        process.exitCode = ExitCode.brokenPipe;
      }
    } else if (err instanceof SbkError) {
      log.error(err.message);
      process.exitCode = err.exitCode;
    } else if (isBrokenPipe(err) && spec.brokenPipeIsOk) {
      process.exitCode = ExitCode.ok;
    } else {
      const sys = describeSystemError(err);
      if (sys) {
        log.error(sys.message);
        process.exitCode = sys.exitCode;
      } else {
        log.error(`internal error (a bug: please report it):\n${(err as Error)?.stack ?? String(err)}`);
        process.exitCode = ExitCode.bug;
      }
    }
  } finally {
    settled = true;
    process.off('beforeExit', unsettled);
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
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
  if (!process.stdout.write(chunk)) {
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        process.stdout.off('drain', ok);
        process.stdout.off('error', done);
        process.stdout.off('close', closed);
        signal?.removeEventListener('abort', aborted);
        if (err) reject(err);
        else resolve();
      };
      const ok = () => done();
      const closed = () => done(Object.assign(new Error('stdout closed'), { code: 'EPIPE' }));
      const aborted = () => done(signal!.reason as Error);
      if (signal?.aborted) return aborted();
      process.stdout.once('drain', ok);
      process.stdout.once('error', done);
      process.stdout.once('close', closed);
      signal?.addEventListener('abort', aborted, { once: true });
    });
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
