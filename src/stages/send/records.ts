// sbk-send's work on what passes through it: one archive per backup record, each a complete tar
// stream handed to the output as it is framed; and the per-volume progress, with an estimate of
// a long volume's size.
import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { Log } from '../../core/log.js';
import type { Meter, Progress, ProgressHooks } from '../../core/progress.js';
import { readRecords } from '../../formats/record.js';
import { estimateSendSize, writeBackupArchive, type SendOptions, type VolumeSend } from './send.js';

/**
 * Progress per volume: bytes, rate, elapsed; when the status line is drawn, also the estimated
 * size of the stream, asked for once the volume has been sending for 3 s: for many small files a
 * metadata-only send costs the kernel up to half of what the real send does: only long volumes
 * pay it. `stop` ends a pending estimate.
 */
export function volumeProgress(progress: Progress, signal: AbortSignal): { hooks: ProgressHooks<VolumeSend> | undefined; stop: () => void } {
  let meter: Meter | undefined;
  let estimating: AbortController | undefined;
  let estimateTimer: ReturnType<typeof setTimeout> | undefined;
  const stop = () => {
    clearTimeout(estimateTimer);
    estimating?.abort();
  };
  if (!progress.enabled) return { hooks: undefined, stop };
  const startEstimate = (m: Meter, snapshot: string, parent: string | undefined) => {
    const controller = (estimating = new AbortController());
    estimateTimer = setTimeout(() => {
      estimateSendSize(snapshot, { parent, signal: AbortSignal.any([signal, controller.signal]) }).then(
        (n) => {
          m.total = n;
          m.estimate = true;
        },
        () => {}, // no estimate: the line shows no total
      );
    }, 3000);
    estimateTimer.unref();
  };
  const hooks: ProgressHooks<VolumeSend> = {
    start: (v) => {
      const m = (meter = progress.start(`${v.record.name} ${v.volume}`));
      if (progress.mode === 'draw') startEstimate(m, v.snapshot, v.parent);
    },
    add: (n) => {
      meter!.bytes += n;
    },
    end: () => {
      stop();
      progress.finish(meter!);
    },
  };
  return { hooks, stop };
}

export interface SendRecordsOptions extends Omit<SendOptions, 'signal'> {
  signal: AbortSignal;
  /** Copies one archive's tar stream out; rejects with the output's own error if it fails. */
  output: (pack: tar.Pack) => Promise<void>;
}

/** Reads backup records and writes each one's archive to `output`. No record at all is an error. */
export async function sendRecords(input: Readable, opts: SendRecordsOptions): Promise<void> {
  const { output, ...sendOpts } = opts;
  let count = 0;
  for await (const record of readRecords(input)) {
    opts.signal.throwIfAborted();
    count++;
    const pack = tar.pack();
    const piping = output(pack);
    piping.catch(() => {}); // handled where awaited; the framing may fail first
    try {
      await writeBackupArchive(pack, record, sendOpts);
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
    opts.log.verbose(`${record.name}: sent`);
  }
  // Nothing at all: the stage before failed (its message says why). Still a failure, so
  // that a plain `sh` pipe (no pipefail) does not end in success.
  if (count === 0)
    throw new SbkError('no input (did the stage before fail?): expected backup records (sbk-snap or sbk-changelog output) on stdin', ExitCode.badInput);
}
