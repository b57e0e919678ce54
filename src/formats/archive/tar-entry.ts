// Writing one tar entry into a tar-stream pack, the one way every writer of sbk archives does it:
// resolves when the pack has taken the entry, rejects when the entry or the pack fails (the pack
// is destroyed when its output fails, e.g. a full disk), never leaving an 'error' unheard.
import type { Writable } from 'node:stream';
import type tar from 'tar-stream';
import { waitForDrain, writeChunk } from '../../core/streams.js';

export interface TarEntryOptions {
  /** Every chunk of the body is also written here first (honouring its backpressure). */
  tee?: Writable;
}

/**
 * Writes an entry. A body given as an array (in memory already) is written at once; an
 * async body is streamed with backpressure. A directory has no body.
 */
export function writeTarEntry(
  pack: tar.Pack,
  header: Parameters<tar.Pack['entry']>[0],
  body: readonly Buffer[] | AsyncIterable<Buffer> = [],
  opts: TarEntryOptions = {},
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const sink = pack.entry(header, (err) => (err ? reject(err) : resolve()));
    // A failing entry reports through the callback; its 'error' event must not go unheard.
    sink.on('error', () => {});
    if (header.type === 'directory') return;
    if (Array.isArray(body)) {
      // Writes wait for the pack's reader (tar-stream backpressure), so memory stays at the body.
      for (const c of body as readonly Buffer[]) sink.write(c);
      (sink as unknown as { end(): void }).end();
      return;
    }
    (async () => {
      for await (const c of body as AsyncIterable<Buffer>) {
        if (opts.tee) await writeChunk(opts.tee, c);
        if (!sink.write(c)) await waitForDrain(sink);
      }
      (sink as unknown as { end(): void }).end();
    })().catch((err: Error) => {
      sink.destroy(err);
      reject(err);
    });
  });
}
