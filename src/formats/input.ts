// Telling kinds of input apart by their first bytes, so that a stage given the wrong stream
// says so instead of failing somewhere inside (see man/sbk.7, STREAMS).
import { PassThrough, type Readable } from 'node:stream';
// The codecs' magic bytes and descriptions come from names.ts, not the codec registry: sniffing
// loads no zlib (sbk-changelog and sbk-send sniff their input and never decompress).
import { CODEC_INFO, codecNameForMagic, type CodecInfoName as CodecName } from './codecs/names.js';

/** A compressed stream is told by its codec's name ('gzip'). */
export type InputKind = 'empty' | CodecName | 'tar' | 'ndjson' | 'btrfs-stream' | 'text' | 'binary';

export function sniff(head: Buffer): InputKind {
  if (head.length === 0) return 'empty';
  const codec = codecNameForMagic(head);
  if (codec) return codec;
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
  ...(Object.fromEntries(Object.values(CODEC_INFO).map((c) => [c.name, c.description])) as Record<CodecName, string>),
  tar: 'a tar stream (sbk-send output?)',
  ndjson: 'NDJSON records (sbk-snap or sbk-changelog output?)',
  'btrfs-stream': 'a raw btrfs send stream',
  text: 'text',
  binary: 'binary data',
};

/**
 * Reads the first `n` bytes of a stream (fewer if it is shorter) and returns them with a stream
 * that yields the whole input again, head included. (Pushing bytes back with unshift() fails on
 * short inputs whose 'end' was already emitted, so the rest is piped into a new stream.)
 * Destroying the returned stream destroys the input, so a stage that stops early (an error, a
 * signal) does not wait for its writer.
 */
export function peekStream(input: Readable, n: number): Promise<{ head: Buffer; stream: Readable }> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let have = 0;
    const cleanup = () => {
      input.off('data', onData);
      input.off('end', onEnd);
      input.off('error', onError);
    };
    const finish = (ended: boolean) => {
      cleanup();
      input.pause();
      const head = Buffer.concat(chunks);
      const out = new PassThrough({ highWaterMark: 64 * 1024 });
      if (head.length) out.write(head);
      if (ended) out.end();
      else {
        input.on('error', (err) => out.destroy(err));
        input.pipe(out);
        out.on('close', () => {
          if (!input.readableEnded) input.destroy();
        });
      }
      resolve({ head: head.subarray(0, n), stream: out });
    };
    const onData = (c: Buffer | string) => {
      const b = typeof c === 'string' ? Buffer.from(c) : c;
      chunks.push(b);
      have += b.length;
      if (have >= n) finish(false);
    };
    const onEnd = () => finish(true);
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    input.on('data', onData);
    input.once('end', onEnd);
    input.once('error', onError);
  });
}
