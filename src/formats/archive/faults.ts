// How a broken archive stream is told from other failures: the errors of a cut or corrupt tar
// stream and of a corrupt compressed stream become one-line SbkErrors (exit 4); I/O errors pass
// unchanged. The one home of these patterns, for the archive reader and for the consumers of
// its entries' bodies (see open.ts, readError).
import { SbkError, ExitCode } from '../../core/errors.js';
// The codecs' data errors are told from names.ts, not the codec registry: the manifest (this
// module's corrupt()) is read and written by stages that load no codec (sbk-send).
import { codecNameOfDataError } from '../codecs/names.js';

export const corrupt = (source: string, msg: string) => new SbkError(`${source}: ${msg}`, ExitCode.corrupt);

/** Messages stay on one line: control characters (newlines of quoted input) become spaces. */
export const oneLine = (m: string) => m.replace(/[\x00-\x1f\x7f]+/g, ' ');

/** tar-stream's messages for a stream that is not a tar at all (met before the first entry). */
const NOT_TAR = /invalid (tar )?header|unknown format|unexpected end of data/i;
/** tar-stream's (and stream plumbing's) messages for a tar cut short or damaged. */
const BROKEN_TAR = /unexpected end|premature|invalid (tar )?header|unknown format|header exceeds|checksum|stream was destroyed/i;

export type StreamFault =
  | { kind: 'codec'; codec: string }
  | { kind: 'tar'; notTar: boolean }
  | undefined;

/** Which stream a read error says is broken: the compressed one (which codec), the tar, or neither. */
export function streamFault(err: unknown): StreamFault {
  const codec = err instanceof Error ? codecNameOfDataError(err) : undefined;
  if (codec) return { kind: 'codec', codec };
  const msg = (err as Error | undefined)?.message ?? String(err);
  if (BROKEN_TAR.test(msg)) return { kind: 'tar', notTar: NOT_TAR.test(msg) };
  return undefined;
}
