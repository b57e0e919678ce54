// zstd archives (`.tar.zst`): standard zstd frames with content checksums, one frame per archive,
// readable by `zstd -d` and `tar --zstd`. Both directions run Debian's `zstd` binary as a child
// (the one exception to "no processes in formats/": the codec is the process), fed and drained
// through pipes with backpressure both ways, so memory stays bounded by the pipes and zstd's own
// window. Why the binary: Node 20's zlib has no zstd, and sbk's dependencies hold no in-process
// zstd (a WASM or native addon would be a new package); the binary is multi-threaded (-T), and
// measured on one 412 MB sbk-send stream `zstd -3 -T2` took 2.6–4.6 s against sbk's in-process
// gzip 12.4 s, `zstd -dc` 0.95 s against `gzip -dc` 3.2 s. The pipe hop costs a copy per byte,
// about 1% of the compression time (bench/zstd.mjs measures sbk against the bare binary).
// Splitting a stream of frames (sbk-pack --store, mixed streams on sbk-unpack's stdin) parses the
// frame and block headers here, without decompressing: that is how a frame's end is found.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { Duplex } from 'node:stream';
import { SbkError, ExitCode } from '../../core/errors.js';
import { waitForDrain, writeChunk, endStream } from '../../core/streams.js';
import type { ByteReader } from './byte-reader.js';
import { CODEC_INFO, ZSTD_DATA_ERROR } from './names.js';
import type { Codec, CodecCounters, CompressedMember, CompressOptions } from './codec.js';

const KiB = 1024;
/** How much may queue for zstd's stdin, to go in one system call (see _writev). */
const WRITE_BATCH = 1024 * KiB;
export const ZSTD_MAGIC = CODEC_INFO.zstd.magic;
/** Levels 20..22 need --ultra and hundreds of MiB per thread: not offered (bounded memory). */
export const ZSTD_LEVELS = CODEC_INFO.zstd.levels;
/** A block holds at most 128 KiB (RFC 8878, 3.1.1.2.3); larger is corrupt. */
const MAX_BLOCK = 128 * KiB;

/** zstd's message, without its name for stdin: "Decoding error (36) : Restored data doesn't match checksum". */
function cleanMessage(stderr: string): string {
  const line = stderr.split('\n').map((l) => l.trim()).filter(Boolean).at(-1) ?? '';
  return line.replace(/^(zstd: )?\/\*stdin\*\\\s*:\s*/, '').replace(/[\x00-\x1f\x7f]+/g, ' ').slice(0, 300);
}

/** `zstd` as a Duplex: bytes written go to its stdin, its stdout is read. Fails unless it exits 0. */
class ZstdProcess extends Duplex implements CodecCounters {
  bytesIn = 0;
  bytesOut = 0;
  /** Compressed bytes taken so far, as zlib's streams say it (sbk-unpack's progress reads it). */
  get bytesWritten(): number {
    return this.bytesIn;
  }
  private readonly child: ChildProcessWithoutNullStreams;
  private stderr = '';
  private finalCb: ((err?: Error | null) => void) | undefined;
  private exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  constructor(
    private readonly args: string[],
    private readonly decompressing: boolean,
  ) {
    super({ readableHighWaterMark: 256 * KiB, writableHighWaterMark: WRITE_BATCH });
    const child = (this.child = spawn('zstd', args, { stdio: ['pipe', 'pipe', 'pipe'] }));
    child.on('error', (err: NodeJS.ErrnoException) =>
      this.destroy(
        err.code === 'ENOENT'
          ? new SbkError('zstd archives need the zstd program (apt-get install zstd), and it is not on PATH', ExitCode.failure)
          : err,
      ),
    );
    child.stderr.on('data', (d: Buffer) => {
      if (this.stderr.length < 4 * KiB) this.stderr += d.toString('utf8');
    });
    child.stdout.on('data', (d: Buffer) => {
      this.bytesOut += d.length;
      if (!this.push(d)) child.stdout.pause();
    });
    // The child's stdin fails with EPIPE when it died: its exit status says why.
    child.stdin.on('error', () => {});
    child.on('close', (code, signal) => {
      this.exit = { code, signal };
      this.settle();
    });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this._writev([{ chunk }], cb);
  }

  /**
   * The chunks that queued while zstd was busy go to its stdin in one system call: with 64 KiB
   * pieces a call each, the calls cost more than the copying (bench/PROFILE.md).
   */
  override _writev(chunks: { chunk: Buffer }[], cb: (err?: Error | null) => void): void {
    const stdin = this.child.stdin;
    if (stdin.errored) return cb(this.failure() ?? stdin.errored);
    let room = true;
    stdin.cork();
    for (const { chunk } of chunks) {
      this.bytesIn += chunk.length;
      room = stdin.write(chunk);
    }
    stdin.uncork();
    (room ? Promise.resolve() : waitForDrain(stdin)).then(() => cb(), (err: Error) => cb(this.failure() ?? err));
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.finalCb = cb;
    this.child.stdin.end();
    this.settle();
  }

  override _read(): void {
    this.child.stdout.resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // Stopped early (a reader that needed only the manifest, an error): the child goes too.
    if (!this.exit) this.child.kill('SIGTERM');
    cb(err);
  }

  /** The error of a child that failed, once it exited. */
  private failure(): Error | undefined {
    if (!this.exit || this.exit.code === 0) return undefined;
    const why = cleanMessage(this.stderr) || (this.exit.signal ? `killed by ${this.exit.signal}` : `exit status ${this.exit.code}`);
    const err = new Error(`zstd: ${why}`) as NodeJS.ErrnoException;
    if (this.decompressing) err.code = ZSTD_DATA_ERROR;
    else err.message = `zstd ${this.args.join(' ')} failed: ${why}`;
    return err;
  }

  /** The child exited: its output ends here, or it failed. */
  private settle(): void {
    if (!this.exit || this.destroyed) return;
    const err = this.failure();
    if (err) return void this.destroy(err);
    if (!this.readableEnded) this.push(null);
    const cb = this.finalCb;
    this.finalCb = undefined;
    cb?.();
  }
}

function threadsOf(opts: CompressOptions): number {
  return opts.threads ?? availableParallelism();
}

/** A Duplex that compresses what is written to it into one zstd frame with a content checksum. */
export function createZstdCompressor(opts: CompressOptions = {}): Duplex & CodecCounters {
  const level = opts.level ?? ZSTD_LEVELS.default;
  if (!Number.isInteger(level) || level < ZSTD_LEVELS.min || level > ZSTD_LEVELS.max)
    throw new RangeError(`level must be an integer in ${ZSTD_LEVELS.min}..${ZSTD_LEVELS.max}, got ${level}`);
  return new ZstdProcess(['-q', `-${level}`, `-T${threadsOf(opts)}`, '--check', '-c'], false);
}

/** A Duplex that decompresses any number of concatenated zstd frames (`zstd -dc`). */
export function createZstdDecompressor(): Duplex {
  return new ZstdProcess(['-q', '-d', '-c'], true);
}

/**
 * One frame of a stream of frames: its bytes are parsed header by header (RFC 8878) to find its
 * end, handed out as read (`raw`), and fed to a `zstd -d` of its own whose output is `plain`.
 */
class ZstdMember implements CompressedMember {
  private readonly decoder = createZstdDecompressor();
  readonly plain = this.decoder;
  readonly raw: AsyncIterable<Buffer> = this.read();
  private complete = false;

  constructor(
    private readonly reader: ByteReader,
    private readonly index: number,
    private readonly source: string,
    private readonly name: () => string | undefined,
  ) {}

  private label(): string {
    const name = this.name();
    return `archive ${this.index + 1}${name ? ` (${name})` : ''}`;
  }

  private corrupt(what: string): SbkError {
    return new SbkError(`${this.source}: the zstd frame of ${this.label()} ${what}`, ExitCode.corrupt);
  }

  private dataError(err: unknown): unknown {
    if (err instanceof SbkError) return err;
    return new SbkError(`${this.source}: the zstd data of ${this.label()} is corrupt (${(err as Error).message})`, ExitCode.corrupt, { cause: err });
  }

  /** Feeds the decoder; its failure (zstd -d said the data is corrupt) as a one-line SbkError. */
  private async feed(b: Buffer): Promise<void> {
    try {
      await writeChunk(this.decoder, b);
    } catch (err) {
      throw this.dataError(err);
    }
  }

  /** Exactly n bytes, fed to the decoder; cut short is corrupt. */
  private async take(n: number, where: string): Promise<Buffer> {
    const b = await this.reader.read(n);
    if (b.length < n) throw this.corrupt(`is cut short ${where}`);
    await this.feed(b);
    return b;
  }

  private async *read(): AsyncGenerator<Buffer> {
    const fixed = await this.take(5, 'in its header');
    const fhd = fixed[4]!;
    if (fhd & 0x08) throw this.corrupt('has a reserved header bit set');
    const single = (fhd >> 5) & 1;
    const fcsSize = [single ? 1 : 0, 2, 4, 8][fhd >> 6]!;
    const rest = (single ? 0 : 1) + [0, 1, 2, 4][fhd & 3]! + fcsSize;
    yield fixed;
    if (rest) yield await this.take(rest, 'in its header');
    for (let last = 0; !last; ) {
      const bh = await this.take(3, 'in a block header');
      const word = bh[0]! | (bh[1]! << 8) | (bh[2]! << 16);
      last = word & 1;
      const type = (word >> 1) & 3;
      const size = word >>> 3;
      if (type === 3) throw this.corrupt('has a block of the reserved type');
      if (size > MAX_BLOCK) throw this.corrupt(`has a block of ${size} bytes (at most ${MAX_BLOCK})`);
      yield bh;
      // An RLE block holds one byte, repeated `size` times.
      for (let left = type === 1 ? 1 : size; left > 0; ) {
        const chunk = await this.reader.next();
        if (!chunk) throw this.corrupt('is cut short inside a block');
        const piece = chunk.length > left ? chunk.subarray(0, left) : chunk;
        this.reader.unshift(chunk.subarray(piece.length));
        left -= piece.length;
        await this.feed(piece);
        yield piece;
      }
    }
    if (fhd & 0x04) yield await this.take(4, 'in its content checksum');
    try {
      await endStream(this.decoder);
    } catch (err) {
      throw this.dataError(err);
    }
    this.complete = true;
  }

  check(): void {
    // The content checksum was checked by zstd -d, whose output (`plain`) ends only when it exits 0.
    if (!this.complete) throw this.corrupt('was not read whole');
  }

  destroy(err?: Error): void {
    this.decoder.destroy(err);
  }
}

export const zstdCodec = {
  ...CODEC_INFO.zstd,
  compress: (opts) => createZstdCompressor(opts),
  decompress: createZstdDecompressor,
  member: async (reader, index, source, name) => new ZstdMember(reader, index, source, name),
} as const satisfies Codec;
