// Writing into streams with backpressure. A bare `once('drain')` waits forever when the stream
// fails (a full disk, the reader gone) before it drains: these waits also end on an error or a
// close, so that a failing output stops its writer instead of hanging it.

/** What the helpers need of a writable: Node's Writable and tar-stream's (streamx) entry sinks. */
// Listeners are typed loosely: the two stream libraries declare their events differently.
interface WritableLike {
  write(chunk: Buffer): boolean;
  end(cb?: (err?: Error | null) => void): unknown;
  once(event: any, listener: (...args: any[]) => void): unknown;
  off(event: any, listener: (...args: any[]) => void): unknown;
  readonly destroyed?: boolean;
  readonly errored?: Error | null;
}

export interface DrainOptions {
  /** Stops waiting (rejecting with the signal's reason) when it aborts. */
  signal?: AbortSignal;
  /** The error for a stream closed without one of its own (default: a plain Error). */
  closedError?: () => Error;
}

/** Resolves on the stream's next 'drain'; rejects when it fails or closes first. */
export function waitForDrain(stream: WritableLike, opts: DrainOptions = {}): Promise<void> {
  const { signal } = opts;
  return new Promise<void>((resolve, reject) => {
    const done = (err?: Error | null) => {
      stream.off('drain', onDrain);
      stream.off('error', done);
      stream.off('close', onClose);
      signal?.removeEventListener('abort', onAbort);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onClose = () => done(stream.errored ?? opts.closedError?.() ?? new Error('the stream was closed while being written'));
    const onAbort = () => done(signal!.reason as Error);
    if (signal?.aborted) return onAbort();
    if (stream.errored || stream.destroyed) return onClose();
    stream.once('drain', onDrain);
    stream.once('error', done);
    stream.once('close', onClose);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Writes a chunk into a stream honouring backpressure; rejects when the stream fails (a full
 * disk) before or while its 'drain' is awaited, which would otherwise never come.
 */
export async function writeChunk(stream: WritableLike, chunk: Buffer): Promise<void> {
  if (stream.errored) throw stream.errored;
  if (stream.write(chunk)) return;
  await waitForDrain(stream);
}

/** Ends a stream; end()'s callback also reports a failed write (disk full): never go on after one. */
export function endStream(stream: WritableLike): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    stream.end((err?: Error | null) => (err ? reject(err) : resolve()));
  });
}
