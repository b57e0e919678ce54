// sbk-send: backup records in, an uncompressed tar stream of the deltas out (one complete tar
// per backup, concatenated: `tar tvi` lists them all).
import { runCli, refuseBinaryToTerminal, toolVersion, makeProgress, writeOut, PROGRESS_OPTION } from './common.js';
import { SbkError, ExitCode } from '../core/errors.js';
import type { Meter } from '../core/progress.js';

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
        const [{ default: tar }, { readRecords }, { writeBackupArchive, estimateSendSize }] = await Promise.all([
          import('tar-stream'),
          import('../formats/record.js'),
          import('../stages/send/send.js'),
        ]);
        const version = toolVersion();
        // Per volume: bytes, rate, elapsed; on a terminal also the estimated size of the stream,
        // asked for once the volume has been sending for 3 s: for many small files a metadata-only
        // send costs the kernel up to half of what the real send does: only long volumes pay it.
        const progress = await makeProgress(ctx, args.progress);
        let meter: Meter | undefined;
        let estimating: AbortController | undefined;
        let estimateTimer: ReturnType<typeof setTimeout> | undefined;
        const hooks = progress.enabled
          ? {
              onProgress: (_volume: string, n: number) => {
                meter!.bytes += n;
              },
              onVolume: (e: { phase: 'start' | 'end'; record: { name: string }; volume: string; snapshot: string; parent?: string }) => {
                if (e.phase === 'start') {
                  const m = (meter = progress.start(`${e.record.name} ${e.volume}`));
                  if (progress.mode === 'draw') {
                    const controller = (estimating = new AbortController());
                    estimateTimer = setTimeout(() => {
                      estimateSendSize(e.snapshot, { parent: e.parent, signal: AbortSignal.any([ctx.signal, controller.signal]) }).then(
                        (n) => {
                          m.total = n;
                          m.estimate = true;
                        },
                        () => {}, // no estimate: the line shows no total
                      );
                    }, 3000);
                    estimateTimer.unref();
                  }
                } else {
                  clearTimeout(estimateTimer);
                  estimating?.abort();
                  progress.finish(meter!);
                }
              },
            }
          : {};
        let count = 0;
        try {
          for await (const record of readRecords(process.stdin)) {
            ctx.signal.throwIfAborted();
            count++;
            const pack = tar.pack();
            const piping = copyToStdout(pack, ctx.signal);
            piping.catch(() => {}); // handled where awaited; the framing may fail first
            try {
              await writeBackupArchive(pack, record, {
                log: ctx.log,
                signal: ctx.signal,
                partSize: args.partSize,
                toolVersion: version,
                ...hooks,
              });
              pack.finalize();
              await piping;
            } catch (err) {
              // No trailer was written: downstream sees an incomplete archive and stores nothing.
              pack.destroy(err as Error);
              // When the output failed first (a full disk), the framing fails with a bare "already
              // finalized or destroyed": the copy rejects with the output's own error, report that.
              await piping;
              throw err;
            }
            ctx.log.verbose(`${record.name}: sent`);
          }
        } finally {
          clearTimeout(estimateTimer);
          estimating?.abort();
          progress.close();
        }
        // Nothing at all: the stage before failed (its message says why). Still a failure, so
        // that a plain `sh` pipe (no pipefail) does not end in success.
        if (count === 0)
          throw new SbkError('no input (did the stage before fail?): expected backup records (sbk-snap or sbk-changelog output) on stdin', ExitCode.badInput);
      },
    },
    argv,
  );
}
