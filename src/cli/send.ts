// sbk-send: backup records in, an uncompressed tar stream of the deltas out (one complete tar
// per backup, concatenated: `tar tvi` lists them all).
import { runCli, refuseBinaryToTerminal, toolVersion, makeProgress, writeOut, PROGRESS_OPTION } from './common.js';

interface SendArgs {
  partSize?: number;
  progress?: boolean;
}

/**
 * Copies one archive's tar stream to stdout, leaving stdout open for the next one. Not
 * `pipeline(pack, stdout, { end: false })`: tar-stream's packs are streamx streams, whose pipe()
 * takes no options and ends its destination, so stdout was ended after the first archive (and
 * got four more listeners per archive). When stdout fails (a full disk, a reader gone), the pack
 * is destroyed with that error, so that the framing stops and the output's error is the one
 * reported.
 */
async function copyToStdout(pack: import('tar-stream').Pack, signal: AbortSignal): Promise<void> {
  try {
    for await (const chunk of pack as AsyncIterable<Buffer>) await writeOut(chunk, signal);
  } catch (err) {
    pack.destroy(err as Error);
    throw err;
  }
}

export function main(argv: string[]): Promise<void> {
  return runCli<SendArgs>(
    {
      name: 'sbk-send',
      usage: '$0 [options] < records.ndjson > backups.tar\n\nReads backup records (sbk-snap or sbk-changelog output) and writes, for each, an sbk archive as an uncompressed tar stream: manifest, meta files, changelog, every volume\'s btrfs send stream, trailer with checksums. Pipe it into sbk-pack.',
      options: (y) =>
        y
          .option('progress', PROGRESS_OPTION)
          .option('part-size', {
            type: 'number',
            describe: 'bytes per delta part (memory per stage); default 8 MiB',
            hidden: true,
          }),
      run: async (args, ctx) => {
        refuseBinaryToTerminal('sbk-send', 'a tar stream');
        const { sendRecords, volumeProgress } = await import('../stages/send/records.js');
        const progress = await makeProgress(ctx, args.progress);
        const { hooks, stop } = volumeProgress(progress, ctx.signal);
        try {
          await sendRecords(process.stdin, {
            log: ctx.log,
            signal: ctx.signal,
            partSize: args.partSize,
            toolVersion: toolVersion(),
            output: (pack) => copyToStdout(pack, ctx.signal),
            progress: hooks,
          });
        } finally {
          stop();
          progress.close();
        }
      },
    },
    argv,
  );
}
