// sbk-snap: container names in, one NDJSON backup record per backup out (snapshots made).
import { runCli, writeOut, WAIT_OPTION, parseWait } from './common.js';
import { SbkError, ExitCode } from '../lib/errors.js';

interface SnapArgs {
  full?: boolean;
  incremental?: boolean;
  all?: boolean;
  wait?: string;
}

export function main(argv: string[]): Promise<void> {
  return runCli<SnapArgs>(
    {
      name: 'sbk-snap',
      usage: '$0 [--full|--incremental] CONTAINER...\n$0 --all\n\nMakes read-only snapshots of every volume of each container and prints one NDJSON backup record per container (pipe it into sbk-changelog or sbk-send).',
      options: (y) =>
        y
          .option('full', { alias: 'f', type: 'boolean', describe: 'make a Full backup' })
          .option('incremental', { alias: 'i', type: 'boolean', describe: 'fail unless a valid parent exists' })
          .option('all', { alias: 'a', type: 'boolean', describe: 'back up every container in the LXC dir' })
          .option('wait', WAIT_OPTION)
          .conflicts('full', 'incremental'),
      run: async (args, ctx) => {
        const { makeBackupSet, findContainers } = await import('../lib/snapshots.js');
        const { formatRecord } = await import('../lib/record.js');
        const { checkContainerName } = await import('../lib/layout.js');
        let names = args._.map(String);
        if (args.all) {
          if (names.length) throw new SbkError('give container names or --all, not both', ExitCode.usage);
          names = await findContainers(ctx.dirs, ctx.log);
          if (!names.length) throw new SbkError(`no containers found in ${ctx.dirs.lxcDir}`, ExitCode.notFound);
        }
        if (!names.length) throw new SbkError('no container given (or use --all)', ExitCode.usage);
        for (const n of names) checkContainerName(n);
        const mode = args.full ? 'full' : args.incremental ? 'incremental' : 'auto';
        const lockWait = parseWait(args.wait);
        // One container failing does not stop the others; the exit code still reports it.
        let failed: SbkError | undefined;
        for (const name of names) {
          ctx.signal.throwIfAborted();
          try {
            const record = await makeBackupSet(ctx.dirs, name, { mode, log: ctx.log, signal: ctx.signal, lockWait });
            ctx.log.verbose(`${name}: snapshots in ${record.set}`);
            await writeOut(formatRecord(record));
          } catch (err) {
            if (ctx.signal.aborted || !(err instanceof SbkError)) throw err;
            ctx.log.error(`${name}: ${err.message}`);
            failed = err;
          }
        }
        if (failed) return names.length === 1 ? failed.exitCode : ExitCode.failure;
      },
    },
    argv,
  );
}
