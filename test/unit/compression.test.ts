// The parallel gzip compressor: its output must be one standard gzip member that every common
// gunzip reads, byte-identical whatever the write chunking or thread count, about as small as
// plain gzip, and it must respect backpressure and die cleanly.
import { describe, it, expect } from 'vitest';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import { createGzipCompressor, createGunzip, MIN_BLOCK_SIZE, type GzipOptions } from '../../src/formats/codecs/gzip.js';
import { crc32, jsCrc32 } from '../../src/formats/codecs/crc32.js';
import { until } from '../helpers/wait.js';

const B = MIN_BLOCK_SIZE; // small blocks keep the tests fast and still cross many boundaries

/** Deterministic text-like data (compresses about like logs or source files). */
function compressible(size: number, seed = 1): Buffer {
  const words = ['backup', 'btrfs', 'subvolume', 'container', 'lxc', 'snapshot', 'delta', 'the', 'of', 'a', 'and', '\n'];
  let x = seed >>> 0 || 1;
  const rnd = () => ((x ^= x << 13), (x ^= x >>> 17), (x ^= x << 5), (x >>> 0) / 2 ** 32);
  const parts: string[] = [];
  let n = 0;
  while (n < size) {
    const w = rnd() < 0.15 ? String(Math.floor(rnd() * 100000)) : words[Math.floor(rnd() * words.length)]!;
    parts.push(w, ' ');
    n += w.length + 1;
  }
  return Buffer.from(parts.join('')).subarray(0, size);
}

/** Cuts `data` into writes of the given sizes, cycling through them. */
function* chunked(data: Buffer, sizes: number[]): Generator<Buffer> {
  for (let off = 0, i = 0; off < data.length; i++) {
    const n = sizes[i % sizes.length]!;
    yield data.subarray(off, off + n);
    off += n;
  }
}

const ODD = [1, 7, 4093, 65536, 3, 100_003, 31_337];

async function gzip(data: Buffer, opts: GzipOptions = { blockSize: B }, sizes = ODD): Promise<Buffer> {
  const out: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      out.push(chunk);
      cb();
    },
  });
  await pipeline(Readable.from(chunked(data, sizes)), createGzipCompressor(opts), sink);
  return Buffer.concat(out);
}

function run(cmd: string, args: string[], input: Buffer): Buffer {
  const r = spawnSync(cmd, args, { input, maxBuffer: 1 << 30 });
  if (r.error) throw r.error;
  expect(r.status, `${cmd}: ${r.stderr?.toString()}`).toBe(0);
  return r.stdout;
}

const PY = 'import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))';

function expectDecompressesEverywhere(gz: Buffer, data: Buffer): void {
  expect(zlib.gunzipSync(gz).equals(data)).toBe(true);
  expect(run('gzip', ['-dc'], gz).equals(data)).toBe(true);
  expect(run('pigz', ['-dc'], gz).equals(data)).toBe(true);
  expect(run('python3', ['-c', PY], gz).equals(data)).toBe(true);
}

/** Waits until `get()` stops changing for `quiet` ms (the stream has stalled). */
async function settle(get: () => number, quiet = 150): Promise<number> {
  let last = -1;
  let v = get();
  while (v !== last) {
    last = v;
    await new Promise((r) => setTimeout(r, quiet));
    v = get();
  }
  return v;
}

describe('createGzipCompressor round trips', () => {
  const cases: [string, Buffer][] = [
    ['empty', Buffer.alloc(0)],
    ['1 byte', Buffer.from('x')],
    ['exactly one block', compressible(B)],
    ['one block - 1', compressible(B - 1)],
    ['one block + 1', compressible(B + 1)],
    ['two blocks exactly', compressible(2 * B)],
    ['several blocks', compressible(5 * B + 12345)],
    ['random (incompressible)', randomBytes(3 * B + 777)],
  ];
  for (const [name, data] of cases) {
    it(`${name}: gunzip, gzip -dc, pigz -dc and python read it back`, async () => {
      const gz = await gzip(data);
      expectDecompressesEverywhere(gz, data);
    });
  }

  it('a compressible multi-MB input with the default block size, written in odd chunks', async () => {
    const data = compressible(3 * 1024 * 1024 + 5);
    const gz = await gzip(data, {});
    expectDecompressesEverywhere(gz, data);
  });

  it('writes the header gzip -n / zlib write, and the CRC-32 and length trailer', async () => {
    const data = compressible(B + 99);
    for (const level of [1, 6, 9]) {
      const gz = await gzip(data, { blockSize: B, level });
      const ref = zlib.gzipSync(data, { level });
      expect(gz.subarray(0, 10).toString('hex')).toBe(ref.subarray(0, 10).toString('hex'));
      expect(gz.subarray(-8).toString('hex')).toBe(ref.subarray(-8).toString('hex'));
    }
    expect((await gzip(Buffer.alloc(0))).equals(zlib.gzipSync(Buffer.alloc(0)))).toBe(true);
  });

  it('createGunzip reads it back as a stream', async () => {
    const data = compressible(4 * B + 3);
    const out: Buffer[] = [];
    await pipeline(Readable.from([await gzip(data)]), createGunzip(), async (src: AsyncIterable<Buffer>) => {
      for await (const c of src) out.push(c);
    });
    expect(Buffer.concat(out).equals(data)).toBe(true);
  });

  it('crc32 (native or fallback) is the gzip CRC-32, chainable', () => {
    for (const f of [crc32, jsCrc32]) {
      expect(f(Buffer.from('123456789'), 0)).toBe(0xcbf43926);
      expect(f(Buffer.from('56789'), f(Buffer.from('1234'), 0))).toBe(0xcbf43926);
    }
    const r = randomBytes(100_001);
    expect(jsCrc32(r.subarray(50_000), jsCrc32(r.subarray(0, 50_000), 0))).toBe(crc32(r, 0));
  });
});

describe('createGzipCompressor output', () => {
  it('is deterministic: same bytes for the same input, whatever the chunking or thread count', async () => {
    const data = Buffer.concat([compressible(3 * B), randomBytes(B / 2), compressible(2 * B + 17, 7)]);
    const a = await gzip(data);
    expect((await gzip(data)).equals(a)).toBe(true);
    expect((await gzip(data, { blockSize: B }, [data.length])).equals(a)).toBe(true); // one big write
    expect((await gzip(data, { blockSize: B }, [B])).equals(a)).toBe(true); // block-aligned writes
    expect((await gzip(data, { blockSize: B }, [5, 3 * B + 1, 999])).equals(a)).toBe(true); // big writes straddling blocks
    expect((await gzip(data, { blockSize: B, threads: 1 })).equals(a)).toBe(true);
    expect((await gzip(data, { blockSize: B, threads: 7 })).equals(a)).toBe(true);
  });

  it('lets a writer reuse its buffer once a write is acknowledged', async () => {
    const data = compressible(7 * B + 5, 9);
    const gz = createGzipCompressor({ blockSize: B, threads: 2 });
    const out: Buffer[] = [];
    gz.on('data', (c: Buffer) => out.push(c));
    const ended = new Promise((r) => gz.on('end', r));
    const buf = Buffer.alloc(3 * B); // bigger than a block, so several blocks come from one write
    for (let off = 0; off < data.length; off += buf.length) {
      const n = data.copy(buf, 0, off);
      await new Promise<void>((res, rej) => gz.write(buf.subarray(0, n), (e) => (e ? rej(e) : res())));
      buf.fill(0xaa); // the write was acknowledged: the buffer is the writer's again
    }
    gz.end();
    await ended;
    expect(zlib.gunzipSync(Buffer.concat(out)).equals(data)).toBe(true);
  });

  it('is within 0.5% of single-stream gzip -6 on compressible data', async () => {
    const data = compressible(4 * 1024 * 1024, 3);
    const ref = zlib.gzipSync(data, { level: 6 }).length;
    for (const blockSize of [B, undefined]) {
      const size = (await gzip(data, { blockSize }, [65536])).length;
      expect(size / ref).toBeLessThan(1.005);
    }
  });

  it('rejects out-of-range options', () => {
    expect(() => createGzipCompressor({ level: 0 })).toThrow(RangeError);
    expect(() => createGzipCompressor({ level: 10 })).toThrow(RangeError);
    expect(() => createGzipCompressor({ blockSize: 1024 })).toThrow(RangeError);
    expect(() => createGzipCompressor({ blockSize: 16 * 1024 * 1024 })).toThrow(RangeError);
    expect(() => createGzipCompressor({ threads: 0 })).toThrow(RangeError);
  });
});

describe('createGzipCompressor flow control and errors', () => {
  it('stops taking input while nobody reads, and resumes when read', async () => {
    const data = randomBytes(24 * B); // 3 MiB; far more than the compressor may hold
    let taken = 0;
    const src = Readable.from(
      (function* () {
        for (const c of chunked(data, [65536])) {
          taken += c.length;
          yield c;
        }
      })(),
    );
    const gz = createGzipCompressor({ blockSize: B, threads: 2 });
    src.pipe(gz);
    // Nobody reads gz: the pipe must stall with bounded memory.
    const stalled = await settle(() => taken);
    expect(stalled).toBeLessThan(data.length / 2);
    // threads + 1 blocks in the queue, one being filled, one full waiting, plus the stream
    // buffers (64 KiB writable, one block's worth readable) and the source's read-ahead.
    expect(stalled).toBeLessThanOrEqual(8 * B + 256 * 1024);
    expect(gz.readableLength).toBeLessThanOrEqual(4 * B);
    expect(gz.writableLength).toBeLessThanOrEqual(128 * 1024);

    const out: Buffer[] = [];
    for await (const c of gz) out.push(c as Buffer);
    expect(taken).toBe(data.length);
    expect(zlib.gunzipSync(Buffer.concat(out)).equals(data)).toBe(true);
  });

  it('write() returns false under backpressure', async () => {
    const gz = createGzipCompressor({ blockSize: B, threads: 1 });
    let writes = 0;
    const chunk = randomBytes(16 * 1024);
    while (gz.write(chunk)) if (++writes > 10_000) break;
    expect(writes).toBeLessThan(64); // well under 1 MiB was accepted
    gz.destroy();
    await until(() => gz.closed, 'the compressor to close', 5000, 5);
  });

  it('keeps memory bounded with a slow consumer', async () => {
    const data = compressible(16 * B, 5);
    let maxHeld = 0;
    const gz = createGzipCompressor({ blockSize: B, threads: 2 });
    const out: Buffer[] = [];
    const slow = new Writable({
      highWaterMark: 16 * 1024,
      write(c: Buffer, _e, cb) {
        out.push(c);
        maxHeld = Math.max(maxHeld, gz.readableLength + gz.writableLength);
        setTimeout(cb, 2);
      },
    });
    await pipeline(Readable.from(chunked(data, [65536])), gz, slow);
    expect(zlib.gunzipSync(Buffer.concat(out)).equals(data)).toBe(true);
    expect(maxHeld).toBeLessThanOrEqual(4 * B);
  });

  it('destroy(err) mid-stream emits the error once, closes, and emits no data afterwards', async () => {
    const gz = createGzipCompressor({ blockSize: B, threads: 4 });
    const errors: Error[] = [];
    let dataAfter = 0;
    let destroyed = false;
    gz.on('error', (e) => errors.push(e));
    gz.on('data', () => {
      if (destroyed) dataAfter++;
    });
    const data = randomBytes(6 * B);
    for (const c of chunked(data, [B / 2])) gz.write(c);
    await new Promise((r) => setImmediate(r)); // blocks are now on the thread pool
    destroyed = true;
    gz.destroy(new Error('boom'));
    await until(() => gz.closed, 'the compressor to close', 5000, 5);
    // A window for the in-flight deflates to come back: what is checked is that nothing comes
    // out of them, which no condition can signal.
    await new Promise((r) => setTimeout(r, 100));
    expect(errors.map((e) => e.message)).toEqual(['boom']);
    expect(dataAfter).toBe(0);
  });

  it('an upstream error fails the pipeline and destroys the compressor', async () => {
    const gz = createGzipCompressor({ blockSize: B });
    const src = Readable.from(
      (function* () {
        yield compressible(3 * B);
        throw new Error('disk on fire');
      })(),
    );
    const sink = new Writable({ write: (_c, _e, cb) => cb() });
    await expect(pipeline(src, gz, sink)).rejects.toThrow('disk on fire');
    expect(gz.destroyed).toBe(true);
  });
});
