// Telling kinds of input apart by their first bytes, so that a stage given the wrong stream
// says so instead of failing somewhere inside (see man/sbk.7, STREAMS).
import type { Readable } from 'node:stream';

export type InputKind = 'empty' | 'gzip' | 'tar' | 'ndjson' | 'btrfs-stream' | 'text' | 'binary';

export function sniff(head: Buffer): InputKind {
  if (head.length === 0) return 'empty';
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  if (head.length >= 13 && head.subarray(0, 13).toString('latin1') === 'btrfs-stream\0') return 'btrfs-stream';
  if (head.length >= 262 && head.subarray(257, 262).toString('latin1') === 'ustar') return 'tar';
  const firstNonSpace = head.find((b) => b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09);
  if (firstNonSpace === 0x7b /* { */) return 'ndjson';
  // Text: no NUL and mostly printable in what we saw.
  if (!head.includes(0)) return 'text';
  return 'binary';
}

export const describeKind: Record<InputKind, string> = {
  empty: 'empty input',
  gzip: 'gzip-compressed data (an sbk archive? sbk-pack output?)',
  tar: 'a tar stream (sbk-send output?)',
  ndjson: 'NDJSON records (sbk-snap or sbk-changelog output?)',
  'btrfs-stream': 'a raw btrfs send stream',
  text: 'text',
  binary: 'binary data',
};

/**
 * Reads up to `n` bytes from the start of a stream without consuming them: they are pushed
 * back (`unshift`) so the next reader sees the whole stream.
 */
export async function peek(stream: Readable, n: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let have = 0;
  while (have < n) {
    const chunk = stream.read() as Buffer | null;
    if (chunk !== null) {
      chunks.push(chunk);
      have += chunk.length;
      continue;
    }
    if (stream.readableEnded || (stream as { destroyed?: boolean }).destroyed) break;
    const more = await new Promise<boolean>((resolve, reject) => {
      const cleanup = () => {
        stream.off('readable', onReadable);
        stream.off('end', onEnd);
        stream.off('error', onError);
      };
      const onReadable = () => {
        cleanup();
        resolve(true);
      };
      const onEnd = () => {
        cleanup();
        resolve(false);
      };
      const onError = (e: Error) => {
        cleanup();
        reject(e);
      };
      stream.once('readable', onReadable);
      stream.once('end', onEnd);
      stream.once('error', onError);
    });
    if (!more) break;
  }
  const all = Buffer.concat(chunks);
  if (all.length) stream.unshift(all);
  return all.subarray(0, n);
}
