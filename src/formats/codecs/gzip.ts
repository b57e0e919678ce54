// In-process parallel gzip, pigz-style. Compression is the bottleneck of a backup, and a single
// zlib stream uses one core; here the input is cut into fixed-size blocks that are deflated
// concurrently on the libuv thread pool and stitched back, in order, into ONE gzip member that
// any gunzip reads. Each block is primed with the previous 32 KiB of input (the deflate window)
// so the ratio stays within a fraction of a percent of plain `gzip`. Block boundaries depend on
// byte offsets only, so the output is the same whatever the write chunking or the thread timing.
import { Duplex } from 'node:stream';
import { availableParallelism } from 'node:os';
import zlib from 'node:zlib';
import type { Codec, CodecCounters } from './codec.js';
import { crc32 } from './crc32.js';
import { gzipMember } from './gzip-members.js';
import { CODEC_INFO } from './names.js';

export interface GzipOptions {
  /** zlib level 1..9 (default 6, like gzip). */
  level?: number;
  /** Blocks deflated at once (default: cores + 1, at most libuv pool size - 1; see defaultThreads). */
  threads?: number;
  /** Input bytes per block, 128 KiB..8 MiB (default 1 MiB). */
  blockSize?: number;
}

const KiB = 1024;
const MiB = 1024 * KiB;
const WINDOW = 32 * KiB; // deflate's maximum match distance: all a block can refer back to
const DEFAULT_BLOCK_SIZE = MiB;
export const MIN_BLOCK_SIZE = 128 * KiB;
const MAX_BLOCK_SIZE = 8 * MiB;

/**
 * One block more than there are cores: a core would otherwise idle while the main thread
 * collects a finished block and hands out the next (measured: 2 cores, 3 blocks ~7% faster
 * than 2). Capped one below the libuv pool size (UV_THREADPOOL_SIZE, default 4) so the file
 * reads and writes feeding and draining the compressor, which share that pool, always find
 * a free thread.
 */
function defaultThreads(): number {
  const pool = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  return Math.max(1, Math.min(availableParallelism() + 1, pool - 1));
}

// ---- gzip framing ------------------------------------------------------------------------
/** The 10-byte header `gzip -n` writes: no name, mtime 0, OS 3 (Unix); XFL as zlib sets it. */
function gzipHeader(level: number): Buffer {
  const xfl = level === 9 ? 2 : level === 1 ? 4 : 0;
  return Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3]);
}

function gzipTrailer(crc: number, size: number): Buffer {
  const t = Buffer.allocUnsafe(8);
  t.writeUInt32LE(crc >>> 0, 0);
  t.writeUInt32LE(size % 2 ** 32, 4); // ISIZE is the length mod 2^32
  return t;
}

// ---- the compressor ------------------------------------------------------------------------
interface Job {
  out?: Buffer;
  done: boolean;
}

function intOption(name: string, v: number | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  if (!Number.isInteger(v) || v < min || v > max) throw new RangeError(`${name} must be an integer in ${min}..${max}, got ${v}`);
  return v;
}

class ParallelGzip extends Duplex {
  private readonly level: number;
  private readonly threads: number;
  private readonly blockSize: number;
  /** Upper bound on a block's deflate output, so zlib hands it back in one thread-pool trip. */
  private readonly outChunk: number;

  private block: Buffer; // the block being filled
  private fill = 0;
  private dict: Buffer | undefined; // last 32 KiB of input before `block` (a view, no copy)
  private crc = 0;
  private size = 0;

  private readonly queue: Job[] = []; // dispatched, not yet pushed; in input order
  private running = 0; // jobs on the thread pool
  private full: Buffer | undefined; // a full block waiting for a free slot
  private writeCb: ((err?: Error | null) => void) | undefined; // held back = backpressure
  private rest: Buffer | undefined; // unconsumed part of the current write
  private finalCb: ((err?: Error | null) => void) | undefined;
  // Set when push() says the reader is behind, cleared by _read(). (Testing readableLength
  // in _read instead would deadlock: _read runs before read() takes the data out.)
  private readBlocked = false;
  private lastSent = false; // the Z_FINISH block (and the trailer after it) are queued

  /** Bytes written in so far (for progress; read them, never written per chunk by callers). */
  bytesIn = 0;
  /** Bytes of gzip output pushed so far. */
  bytesOut = 0;

  constructor(opts: GzipOptions) {
    const blockSize = intOption('blockSize', opts.blockSize, DEFAULT_BLOCK_SIZE, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE);
    // The readable buffer may hold about one block's output before input stops being taken.
    super({ readableHighWaterMark: blockSize, writableHighWaterMark: 64 * KiB });
    this.level = intOption('level', opts.level, 6, 1, 9);
    this.threads = intOption('threads', opts.threads, defaultThreads(), 1, 1024);
    this.blockSize = blockSize;
    this.outChunk = blockSize + (blockSize >>> 9) + 4 * KiB;
    this.block = Buffer.allocUnsafe(blockSize);
    const header = gzipHeader(this.level);
    this.bytesOut += header.length;
    this.push(header);
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.bytesIn += chunk.length;
    this.rest = chunk;
    this.writeCb = cb;
    this.pump();
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.finalCb = cb;
    this.pump();
  }

  override _read(): void {
    this.readBlocked = false;
    this.pump();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    // Jobs still on the thread pool finish on their own; `drain` ignores them once destroyed.
    this.queue.length = 0;
    this.full = this.rest = this.dict = undefined;
    this.writeCb = this.finalCb = undefined;
    cb(err);
  }

  /** A new block may start deflating: a thread is free and the reader is keeping up. */
  private canDispatch(): boolean {
    // A finished block may wait for a slower predecessor; one spare slot keeps every thread busy
    // meanwhile, and bounds what is held to threads + 1 blocks.
    return this.running < this.threads && this.queue.length <= this.threads && !this.readBlocked;
  }

  /** Moves input forward as far as the limits allow; called whenever one of them may have eased. */
  private pump(): void {
    if (this.destroyed) return;
    for (;;) {
      if (this.full) {
        if (!this.canDispatch()) return;
        this.dispatch(this.full, false);
        this.full = undefined;
      }
      const rest = this.rest;
      if (rest) {
        // Input is always copied into a block of our own (one memcpy, ~1% of the deflate time):
        // a writer may reuse its buffer once its write is acknowledged, while a view of it
        // would still be read by the thread pool and as the next block's dictionary.
        const n = Math.min(rest.length, this.blockSize - this.fill);
        rest.copy(this.block, this.fill, 0, n);
        this.fill += n;
        this.rest = n < rest.length ? rest.subarray(n) : undefined;
        if (this.fill === this.blockSize) {
          this.full = this.block;
          this.block = Buffer.allocUnsafe(this.blockSize); // the old one now belongs to its job
          this.fill = 0;
        }
        continue;
      }
      if (this.writeCb) {
        // All of this write is copied: ask for more.
        const cb = this.writeCb;
        this.writeCb = undefined;
        cb();
        return;
      }
      if (this.finalCb && !this.lastSent && this.canDispatch()) {
        // End of input: what is left (maybe nothing) is the last block, ended with Z_FINISH.
        this.lastSent = true;
        this.dispatch(this.block.subarray(0, this.fill), true);
      }
      return;
    }
  }

  private dispatch(data: Buffer, last: boolean): void {
    const job: Job = { done: false };
    this.queue.push(job);
    this.running++;
    zlib.deflateRaw(
      data,
      {
        level: this.level,
        dictionary: this.dict,
        // SYNC_FLUSH byte-aligns the end of a block (00 00 ff ff) so the next block's
        // independently produced bits can simply be appended to it.
        finishFlush: last ? zlib.constants.Z_FINISH : zlib.constants.Z_SYNC_FLUSH,
        chunkSize: this.outChunk,
      },
      (err, out) => {
        this.running--;
        if (this.destroyed) return;
        if (err) return void this.destroy(err);
        job.out = out;
        job.done = true;
        this.drain();
      },
    );
    // The CRC runs here, on the main thread, while the pool deflates.
    this.crc = crc32(data, this.crc);
    this.size += data.length;
    this.dict = data.length >= WINDOW ? data.subarray(data.length - WINDOW) : undefined;
    if (last) this.queue.push({ done: true, out: gzipTrailer(this.crc, this.size) });
  }

  /** Pushes finished blocks in input order, then lets more input in. */
  private drain(): void {
    while (this.queue.length && this.queue[0]!.done) {
      const out = this.queue.shift()!.out!;
      this.bytesOut += out.length;
      if (!this.push(out)) this.readBlocked = true;
      if (this.queue.length === 0 && this.lastSent && this.finalCb) {
        // The trailer went out: the gzip member is complete.
        this.push(null);
        const cb = this.finalCb;
        this.finalCb = undefined;
        cb();
        return;
      }
    }
    this.pump();
  }
}

/** A Duplex that gzips what is written to it, using several cores; output is one gzip member. */
export function createGzipCompressor(opts: GzipOptions = {}): Duplex & CodecCounters {
  return new ParallelGzip(opts);
}

/**
 * Decompresses any gzip stream: Node's gunzip reads concatenated members (`cat a.tar.gz
 * b.tar.gz`) as one stream.
 */
export function createGunzip(): zlib.Gunzip {
  return zlib.createGunzip({ chunkSize: 256 * 1024 });
}

export const gzipCodec = {
  ...CODEC_INFO.gzip,
  compress: (opts) => createGzipCompressor(opts),
  decompress: createGunzip,
  member: gzipMember,
} as const satisfies Codec;
