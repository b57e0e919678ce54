// What every sbk binary shares: common options, logging, signals, broken pipes, exit codes.
// Each src/cli/<verb>.ts only declares its options and wires streams to src/lib.
import yargs, { type Argv } from 'yargs';
import { readFileSync } from 'node:fs';
import { ExitCode, SbkError, describeSystemError, isBrokenPipe } from '../lib/errors.js';
import { Log, type Verbosity } from '../lib/log.js';
import { resolveDirs, type Dirs } from '../lib/layout.js';

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
  'Exit status: 0 ok, 1 failure, 2 usage, 3 bad input, 4 corrupt data, 5 not found, 6 conflict, 7 locked, 70 bug, 130/143 interrupted.\nSee man sbk(7) for the formats.';

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
  const log = new Log(spec.name);
  const controller = new AbortController();
  let stopReason: 'signal' | 'pipe' | undefined;
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
        controller.abort(new SbkError('the reader of stdout went away (broken pipe)', ExitCode.failure));
      }
      return;
    }
    log.error(`stdout: ${err.message}`);
    process.exitCode = ExitCode.failure;
  });

  let args: A & CommonArgs & { _: (string | number)[] };
  const parser = spec
    .options(
      yargs(argv)
        .scriptName(spec.name)
        .usage(spec.usage)
        .option('lxc-dir', {
          type: 'string',
          describe: 'LXC containers directory [env SBK_LXC_DIR] (default /var/snap/subutai/common/lxc)',
        })
        .option('backup-dir', {
          type: 'string',
          describe: 'backup directory [env SBK_BACKUP_DIR] (default <lxc-dir>/backups)',
        })
        .option('quiet', { alias: 'q', type: 'boolean', describe: 'print errors only' })
        .option('verbose', { alias: 'v', type: 'boolean', describe: 'print more detail' })
        .strictOptions()
        .version(toolVersion())
        .help()
        .alias('help', 'h')
        .epilog(EPILOG)
        .wrap(Math.min(100, process.stderr.columns || 100)) as unknown as Argv<CommonArgs>,
    )
    .fail((msg, err) => {
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
  try {
    const dirs = resolveDirs({ lxcDir: args.lxcDir, backupDir: args.backupDir });
    const code = await spec.run(args, { log, dirs, signal: controller.signal });
    if (stopReason === 'pipe' && !spec.brokenPipeIsOk) {
      log.error('the reader of stdout went away (broken pipe)');
      process.exitCode = ExitCode.failure;
    } else if (stopReason === 'signal') {
      process.exitCode = signalExit;
    } else if (typeof code === 'number') process.exitCode = code;
  } catch (err) {
    if (stopReason === 'signal') {
      process.exitCode = signalExit;
    } else if (stopReason === 'pipe') {
      if (spec.brokenPipeIsOk) process.exitCode = ExitCode.ok;
      else {
        log.error('the reader of stdout went away (broken pipe)');
        process.exitCode = ExitCode.failure;
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

/** Writes to stdout honouring backpressure. */
export async function writeOut(chunk: string | Uint8Array): Promise<void> {
  if (!process.stdout.write(chunk)) {
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error) => {
        process.stdout.off('drain', ok);
        process.stdout.off('error', done);
        process.stdout.off('close', closed);
        if (err) reject(err);
        else resolve();
      };
      const ok = () => done();
      const closed = () => done(Object.assign(new Error('stdout closed'), { code: 'EPIPE' }));
      process.stdout.once('drain', ok);
      process.stdout.once('error', done);
      process.stdout.once('close', closed);
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
