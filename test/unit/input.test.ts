// Input sniffing (src/formats/input.ts): what kind of stream a stage was given (records,
// tar, gzip, send stream, paths, a terminal) from its first bytes, and peeking without loss.
import { execFileSync } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdtemp, writeFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable, PassThrough, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { describe, it, expect } from 'vitest';
import { sniff, describeKind, peekStream, type InputKind } from '../../src/formats/input.js';

async function tarBytes(entries: { name: string; body: string }[]): Promise<Buffer> {
  const pack = tar.pack();
  for (const e of entries) pack.entry({ name: e.name }, e.body);
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const c of pack) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

/** Deterministic bytes 0..255 without a pattern that sniffs as anything else. */
function bytes(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  let x = seed;
  for (let i = 0; i < n; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

function chunked(buf: Buffer, size: number): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts, { objectMode: false });
}

async function drain(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(Buffer.from(c as Buffer));
  return Buffer.concat(chunks);
}

describe('sniff', () => {
  it('empty', () => {
    expect(sniff(Buffer.alloc(0))).toBe('empty');
  });

  it('gzip (sbk-pack output), whatever follows the magic', () => {
    expect(sniff(gzipSync('hello'))).toBe('gzip');
    expect(sniff(Buffer.from([0x1f, 0x8b]))).toBe('gzip');
    // One byte of the magic is not enough; a wrong second byte is not gzip.
    expect(sniff(Buffer.from([0x1f]))).toBe('text');
    expect(sniff(Buffer.from([0x1f, 0x8c, 0]))).toBe('binary');
  });

  it('tar (ustar and GNU magic), but only with the whole header seen', async () => {
    const t = await tarBytes([{ name: 'manifest.json', body: '{}' }]);
    expect(sniff(t)).toBe('tar');
    expect(sniff(t.subarray(0, 512))).toBe('tar');
    expect(sniff(t.subarray(0, 262))).toBe('tar');
    expect(sniff(t.subarray(0, 261))).toBe('binary');
    const gnu = Buffer.alloc(512);
    gnu.write('rootfs.delta');
    gnu.write('ustar  \0', 257, 'latin1');
    expect(sniff(gnu)).toBe('tar');
  });

  it('a tar whose first file is named like JSON is still tar', async () => {
    expect(sniff(await tarBytes([{ name: '{weird}.json', body: 'x' }]))).toBe('tar');
  });

  it('a raw btrfs send stream', () => {
    expect(sniff(Buffer.concat([Buffer.from('btrfs-stream\0'), Buffer.from([1, 0, 0, 0])]))).toBe('btrfs-stream');
    expect(sniff(Buffer.from('btrfs-stream\0'))).toBe('btrfs-stream');
    expect(sniff(Buffer.from('btrfs-stream'))).toBe('text');
  });

  it('NDJSON: the first non-blank byte is {', () => {
    expect(sniff(Buffer.from('{"sbk":"backup"}\n'))).toBe('ndjson');
    expect(sniff(Buffer.from('\n\r\n \t{"sbk":"backup"}\n'))).toBe('ndjson');
    expect(sniff(Buffer.from('{'))).toBe('ndjson');
    expect(sniff(Buffer.from('[{"sbk":"backup"}]'))).toBe('text');
  });

  it('text and binary', () => {
    expect(sniff(Buffer.from('hello world\n'))).toBe('text');
    expect(sniff(Buffer.from('ünïcødé\n'))).toBe('text');
    expect(sniff(Buffer.from(' \n'))).toBe('text');
    expect(sniff(Buffer.from('abc\0def'))).toBe('binary');
    expect(sniff(bytes(512))).toBe('binary');
  });

  it('describes every kind in words', () => {
    const kinds: InputKind[] = ['empty', 'gzip', 'zstd', 'tar', 'ndjson', 'btrfs-stream', 'text', 'binary'];
    for (const k of kinds) expect(describeKind[k]).toMatch(/^[a-zA-Z]/);
    expect(Object.keys(describeKind).sort()).toEqual([...kinds].sort());
  });
});

describe('sniff without the codecs', () => {
  // sbk-changelog and sbk-send sniff every input: the codecs' magic bytes live apart from their
  // implementations (codecs/names.ts) so that telling a compressed stream loads no zlib.
  it('tells gzip and zstd by their magic without loading zlib or a codec module', () => {
    const input = new URL('../../dist/formats/input.js', import.meta.url).href;
    const script = [
      `const { sniff } = await import(${JSON.stringify(input)});`,
      'const kinds = [sniff(Buffer.from([0x1f, 0x8b, 8, 0])), sniff(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0])), sniff(Buffer.from([0x28, 0xb5, 0]))];',
      "process.stdout.write(JSON.stringify({ kinds, zlib: process.moduleLoadList.some((m) => / zlib$/.test(m)) }));",
    ].join('\n');
    const out = JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' })) as unknown;
    expect(out).toEqual({ kinds: ['gzip', 'zstd', 'binary'], zlib: false });
  });
});

describe('peekStream', () => {
  const data = bytes(100_000);

  it.each([1, 100, 511, 512, 513, 4096, 100_000])('returns the head and loses no byte (chunks of %i)', async (size) => {
    const { head, stream } = await peekStream(chunked(data, size), 512);
    expect(head).toEqual(data.subarray(0, 512));
    expect((await drain(stream)).equals(data)).toBe(true);
  });

  it('a stream shorter than the head: all of it, and again all of it', async () => {
    for (const n of [1, 5, 511]) {
      const short = data.subarray(0, n);
      const { head, stream } = await peekStream(chunked(short, 3), 512);
      expect(head.equals(short)).toBe(true);
      expect((await drain(stream)).equals(short)).toBe(true);
    }
  });

  it('a stream that has already ended (its end event emitted before the peek finished)', async () => {
    const p = new PassThrough();
    p.end('abc');
    const { head, stream } = await peekStream(p, 512);
    expect(head.toString()).toBe('abc');
    expect((await drain(stream)).toString()).toBe('abc');
  });

  it('empty input: an empty head and an empty stream', async () => {
    const { head, stream } = await peekStream(Readable.from([], { objectMode: false }), 512);
    expect(head.length).toBe(0);
    expect((await drain(stream)).length).toBe(0);
    const p = new PassThrough();
    p.end();
    const r = await peekStream(p, 512);
    expect(r.head.length).toBe(0);
    expect((await drain(r.stream)).length).toBe(0);
  });

  it('bytes arriving slowly through a pipe', async () => {
    const p = new PassThrough();
    let i = 0;
    const timer = setInterval(() => {
      if (i >= 3000) {
        clearInterval(timer);
        p.end();
      } else {
        p.write(data.subarray(i, i + 100));
        i += 100;
      }
    }, 1);
    const { head, stream } = await peekStream(p, 512);
    expect(head.equals(data.subarray(0, 512))).toBe(true);
    expect((await drain(stream)).equals(data.subarray(0, 3000))).toBe(true);
  });

  it('a file stream, piped on to a writer', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'sbk-input-'));
    try {
      const file = path.join(dir, 'data');
      const big = bytes(3 * 1024 * 1024, 7);
      await writeFile(file, big);
      const { head, stream } = await peekStream(createReadStream(file, { highWaterMark: 64 * 1024 }), 512);
      expect(head.equals(big.subarray(0, 512))).toBe(true);
      const got: Buffer[] = [];
      await pipeline(
        stream,
        new Writable({
          highWaterMark: 1024,
          write(c: Buffer, _e, cb) {
            got.push(c);
            setImmediate(cb); // a slow writer: backpressure
          },
        }),
      );
      expect(Buffer.concat(got).equals(big)).toBe(true);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('a head larger than the stream’s chunks and a head of 0 bytes', async () => {
    const a = await peekStream(chunked(data, 1000), 10_000);
    expect(a.head.equals(data.subarray(0, 10_000))).toBe(true);
    expect((await drain(a.stream)).equals(data)).toBe(true);
    const b = await peekStream(chunked(data, 1000), 0);
    expect(b.head.length).toBe(0);
    expect((await drain(b.stream)).equals(data)).toBe(true);
  });

  it('an error before the head is complete rejects', async () => {
    const boom = new Error('EIO');
    const input = new Readable({ read() {} });
    input.push(Buffer.from('ab'));
    setTimeout(() => input.destroy(boom), 5);
    await expect(peekStream(input, 512)).rejects.toBe(boom);
  });

  it('an error after the head reaches the reader of the stream', async () => {
    const boom = new Error('EIO later');
    const input = new Readable({ read() {} });
    input.push(data.subarray(0, 1000));
    const { head, stream } = await peekStream(input, 512);
    expect(head.length).toBe(512);
    setTimeout(() => input.destroy(boom), 5);
    await expect(drain(stream)).rejects.toBe(boom);
  });

  it('a reader that stops early releases the input', async () => {
    const input = chunked(data, 100);
    const { stream } = await peekStream(input, 512);
    for await (const _ of stream) break;
    await new Promise((r) => setImmediate(r));
    expect(input.destroyed).toBe(true);
  });

  it('sniff of the head tells the kind, and the stream still holds all of it', async () => {
    const t = await tarBytes([{ name: 'manifest.json', body: '{"a":1}' }]);
    const { head, stream } = await peekStream(chunked(t, 100), 512);
    expect(sniff(head)).toBe('tar');
    expect((await drain(stream)).equals(t)).toBe(true);
  });
});
