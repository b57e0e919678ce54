// sbk-send: backup records in, an uncompressed tar stream of the deltas out (one complete tar
// per backup, concatenated: `tar tvi` lists them all).
import { runCli, refuseBinaryToTerminal, toolVersion } from './common.js';

interface SendArgs {
  partSize?: number;
}

export function main(argv: string[]): Promise<void> {
  return runCli<SendArgs>(
    {
      name: 'sbk-send',
      usage: '$0 [options] < records.ndjson > backups.tar\n\nReads backup records (sbk-snap or sbk-changelog output) and writes, for each, an sbk archive as an uncompressed tar stream: manifest, meta files, changelog, every volume\'s btrfs send stream, trailer with checksums. Pipe it into sbk-pack.',
      options: (y) =>
        y.option('part-size', {
          type: 'number',
          describe: 'bytes per delta part (memory per stage); default 8 MiB',
          hidden: true,
        }),
      run: async (args, ctx) => {
        refuseBinaryToTerminal('sbk-send', 'a tar stream');
        const [{ default: tar }, { readRecords }, { writeBackupArchive }, { pipeline }] = await Promise.all([
          import('tar-stream'),
          import('../lib/record.js'),
          import('../lib/send.js'),
          import('node:stream/promises'),
        ]);
        const version = toolVersion();
        for await (const record of readRecords(process.stdin)) {
          ctx.signal.throwIfAborted();
          const pack = tar.pack();
          const piping = pipeline(pack, process.stdout, { end: false, signal: ctx.signal });
          piping.catch(() => {}); // handled where awaited; the framing may fail first
          try {
            await writeBackupArchive(pack, record, {
              log: ctx.log,
              signal: ctx.signal,
              partSize: args.partSize,
              toolVersion: version,
            });
            pack.finalize();
            await piping;
          } catch (err) {
            // No trailer was written: downstream sees an incomplete archive and stores nothing.
            pack.destroy(err as Error);
            await piping.catch(() => {});
            throw err;
          }
          ctx.log.verbose(`${record.name}: sent`);
        }
      },
    },
    argv,
  );
}
