// Telling kinds of input apart by their first bytes, so that a stage given the wrong stream
// says so instead of failing somewhere inside (see man/sbk.7, STREAMS).
import { Readable } from 'node:stream';

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
 * Reads the first `n` bytes of a stream (fewer if it is shorter) and returns them with a stream
 * that yields the whole input again, head included. (Pushing bytes back with unshift() fails on
 * short inputs whose 'end' has already been emitted, so the rest is re-wrapped instead.)
 */
export async function peekStream(input: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  const it = input[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  const chunks: Buffer[] = [];
  let have = 0;
  let done = false;
  while (have < n) {
    const r = await it.next();
    if (r.done) {
      done = true;
      break;
    }
    const c = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    chunks.push(c);
    have += c.length;
  }
  const head = Buffer.concat(chunks);
  async function* whole(): AsyncGenerator<Buffer> {
    if (head.length) yield head;
    if (done) return;
    for (;;) {
      const r = await it.next();
      if (r.done) return;
      yield r.value;
    }
  }
  const stream = Readable.from(whole(), { objectMode: false, highWaterMark: 64 * 1024 });
  // Closing the wrapper early (a consumer that stops) must release the input too.
  stream.on('close', () => {
    if (!input.destroyed && !input.readableEnded) input.destroy();
  });
  return { head: head.subarray(0, n), stream };
}
