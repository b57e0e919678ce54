// The zstd codec and the codec registry: archives are told by magic bytes (not names), the zstd
// compressor writes standard frames with content checksums that `zstd -d` reads, errors of the
// child are data errors, a stream may mix gzip and zstd members (split by parsing their headers),
// and sbk-pack validates --compress, --level (in each codec's range) and --threads.
import { describe, it, expect } from 'vitest';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import zlib from 'node:zlib';
import fc from 'fast-check';
import { codecs, codecByName, codecForMagic, codecOfDataError, DEFAULT_CODEC } from '../../src/formats/codecs/codec.js';
import { createZstdCompressor, createZstdDecompressor, zstdCodec, ZSTD_LEVELS } from '../../src/formats/codecs/zstd.js';
import { compressedMembers, decompressMembers } from '../../src/formats/codecs/members.js';
import { sniff } from '../../src/formats/input.js';
import { ARCHIVE_SUFFIXES } from '../../src/core/layout.js';
import { CODEC_INFO, DEFAULT_CODEC_NAME } from '../../src/formats/codecs/names.js';
import { SbkError } from '../../src/core/errors.js';
import { BIN } from '../helpers/sandbox.js';
import { until } from '../helpers/wait.js';

const text = (n: number, seed = 1) => Buffer.from(Array.from({ length: n }, (_, i) => 'sbk zstd block '.charCodeAt((i * seed + (i >> 7)) % 15)));
const zstdCli = (input: Buffer, args: string[]) => spawnSync('zstd', ['-q', ...args], { input, maxBuffer: 1 << 28 });

async function collect(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function compress(data: Buffer, opts = {}): Promise<Buffer> {
  const z = createZstdCompressor(opts);
  const [out] = await Promise.all([collect(z), pipeline(Readable.from([data]), z as unknown as Writable, { end: true }).catch(() => {})]);
  return out;
}

describe('the codec registry', () => {
  it('has gzip (the default) and zstd, each suffix among the archive names layout parses', () => {
    expect(codecs.map((c) => c.name)).toEqual(['gzip', 'zstd']);
    expect(DEFAULT_CODEC.name).toBe('gzip');
    // What sbk-pack's options say (names.ts, loaded without the codecs) is what the codecs are.
    expect(DEFAULT_CODEC_NAME).toBe(DEFAULT_CODEC.name);
    expect(Object.values(CODEC_INFO)).toEqual(
      codecs.map((c) => ({ name: c.name, suffix: c.suffix, levels: c.levels, magic: c.magic, description: c.description, isDataError: c.isDataError })),
    );
    expect(codecs.map((c) => c.suffix)).toEqual([...ARCHIVE_SUFFIXES]);
    expect(codecByName('zstd')).toBe(zstdCodec);
    expect(codecByName('lz4')).toBeUndefined();
    expect(zstdCodec.levels).toEqual({ min: 1, max: 19, default: 3 });
  });

  it('tells formats by magic bytes: 1F 8B is gzip, 28 B5 2F FD is zstd, a prefix or anything else is none', () => {
    expect(codecForMagic(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0x04]))?.name).toBe('zstd');
    expect(codecForMagic(Buffer.from([0x1f, 0x8b, 8]))?.name).toBe('gzip');
    expect(codecForMagic(Buffer.from([0x28, 0xb5, 0x2f]))).toBeUndefined();
    expect(sniff(zstdCli(Buffer.from('x'), ['-c']).stdout)).toBe('zstd');
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 8 }), (b) => {
        const head = Buffer.from(b);
        const c = codecForMagic(head);
        if (c) expect(head.subarray(0, c.magic.length).equals(c.magic)).toBe(true);
        else for (const k of codecs) expect(head.length >= k.magic.length && head.subarray(0, k.magic.length).equals(k.magic)).toBe(false);
      }),
      { seed: 15, numRuns: 500 },
    );
  });
});

describe('the zstd compressor', () => {
  it('writes one standard frame with a content checksum, which zstd -d and the decompressor read back', async () => {
    const data = Buffer.concat([text(3 << 20), randomBytes(300_000)]);
    const z = await compress(data, { level: 3, threads: 2 });
    expect(z.subarray(0, 4).equals(zstdCodec.magic)).toBe(true);
    expect(z[4]! & 0x04).toBe(0x04); // Content_Checksum_flag
    const back = zstdCli(z, ['-d', '-c']);
    expect(back.status).toBe(0);
    expect(back.stdout.equals(data)).toBe(true);
    const d = createZstdDecompressor();
    const [out] = await Promise.all([collect(d), pipeline(Readable.from([z, z]), d as unknown as Writable)]);
    expect(out.equals(Buffer.concat([data, data]))).toBe(true);
  });

  it('counts bytes in and out, and takes every level of its range and no other', async () => {
    const z = createZstdCompressor({ level: ZSTD_LEVELS.max, threads: 1 });
    const [out] = await Promise.all([collect(z), pipeline(Readable.from([text(100_000)]), z as unknown as Writable)]);
    expect(z.bytesIn).toBe(100_000);
    expect(z.bytesOut).toBe(out.length);
    for (const level of [0, 20, 22, 2.5, -1]) expect(() => createZstdCompressor({ level })).toThrow(RangeError);
  });

  it('stops taking input while nobody reads its output (bounded memory)', async () => {
    const z = createZstdCompressor({ level: 1, threads: 1 });
    let written = 0;
    let blocked = false;
    const chunk = randomBytes(1 << 20);
    // Incompressible input and no reader: the pipes and zstd's buffers fill, then writes wait.
    const write = () => {
      while (z.write(chunk)) written += chunk.length;
      written += chunk.length;
      blocked = true;
    };
    write();
    await until(() => blocked, 'the compressor to push back');
    const before = written;
    await new Promise((r) => setImmediate(r));
    expect(written).toBe(before);
    expect(written).toBeLessThan(64 << 20);
    z.destroy();
  });

  it('a corrupt or cut frame fails the decompressor with a data error (as a corrupt gzip stream does)', async () => {
    const z = await compress(text(500_000), { threads: 1 });
    const flipped = Buffer.from(z);
    flipped[Math.floor(z.length / 2)]! ^= 0x55;
    for (const bad of [flipped, z.subarray(0, z.length - 2), z.subarray(0, 100)]) {
      const d = createZstdDecompressor();
      const err = await Promise.all([collect(d), pipeline(Readable.from([bad]), d as unknown as Writable)]).then(
        () => undefined,
        (e: Error) => e,
      );
      expect(err).toBeInstanceOf(Error);
      expect(codecOfDataError(err!)?.name).toBe('zstd');
      expect(err!.message).toMatch(/^zstd: /);
      expect(err!.message).not.toContain('\n');
    }
  });
});

describe('without the zstd program', () => {
  it('says what is missing in one line (exit 1), instead of a spawn error', async () => {
    const path0 = process.env.PATH;
    process.env.PATH = '/nonexistent';
    let d;
    try {
      d = createZstdDecompressor();
    } finally {
      process.env.PATH = path0;
    }
    const err = await collect(d).then(() => undefined, (e: SbkError) => e);
    expect(err).toBeInstanceOf(SbkError);
    expect(err!.exitCode).toBe(1);
    expect(err!.message).toMatch(/need the zstd program \(apt-get install zstd\)/);
  });
});

describe('streams of gzip and zstd members', () => {
  const a = text(200_000, 3);
  const b = text(150_000, 5);
  const c = text(70_000, 7);

  it('are split member by member, each by its own codec, its bytes kept exactly', async () => {
    const parts = [zlib.gzipSync(a), await compress(b), zlib.gzipSync(c), await compress(a)];
    const members = compressedMembers(Readable.from([Buffer.concat(parts)]), 'test');
    const seen: { codec: string; raw: Buffer; plain: Buffer }[] = [];
    for (;;) {
      const m = await members.next(() => undefined);
      if (!m) break;
      const [raw, plain] = await Promise.all([collect(Readable.from(m.raw)), collect(m.plain)]);
      m.check();
      seen.push({ codec: m.codec.name, raw, plain });
    }
    expect(seen.map((s) => s.codec)).toEqual(['gzip', 'zstd', 'gzip', 'zstd']);
    seen.forEach((s, i) => expect(s.raw.equals(parts[i]!)).toBe(true));
    expect(seen.map((s) => s.plain.length)).toEqual([a.length, b.length, c.length, a.length]);
  });

  it('decompress to the content of them all, one after another', async () => {
    const stream = Buffer.concat([await compress(a), zlib.gzipSync(b), await compress(c)]);
    // Fed in odd pieces: a member's end falls inside a chunk.
    const pieces = [];
    for (let o = 0; o < stream.length; o += 7777) pieces.push(stream.subarray(o, o + 7777));
    expect((await collect(decompressMembers(Readable.from(pieces), 'test'))).equals(Buffer.concat([a, b, c]))).toBe(true);
  });

  it('flipped bytes and cuts anywhere: a one-line SbkError (3 or 4), or exactly the content', async () => {
    const zst = await compress(b, { threads: 1 });
    const stream = Buffer.concat([zlib.gzipSync(a), zst]);
    const whole = Buffer.concat([a, b]);
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: stream.length - 1 }), fc.integer({ min: 0, max: 255 }), fc.boolean(), async (at, x, cut) => {
        const m = Buffer.from(stream);
        const mutant = cut ? m.subarray(0, at) : ((m[at]! ^= x || 1), m);
        try {
          const out = await collect(decompressMembers(Readable.from([mutant]), 'mutant'));
          expect(out.equals(whole), `mutation at ${at}`).toBe(true);
        } catch (err) {
          expect(err, String(err)).toBeInstanceOf(SbkError);
          expect([3, 4]).toContain((err as SbkError).exitCode);
          expect((err as Error).message).not.toContain('\n');
        }
      }),
      { seed: 2026, numRuns: 60 },
    );
  });

  it('bytes after the last member that are no member are trailing garbage (4); no member at all is bad input (3)', async () => {
    const z = await compress(a);
    for (const [input, code] of [
      [Buffer.concat([z, Buffer.from('garbage')]), 4],
      [Buffer.from('plain text, no member'), 3],
    ] as const) {
      const err = await collect(decompressMembers(Readable.from([input]), 'x')).then(() => undefined, (e: SbkError) => e);
      expect(err?.exitCode).toBe(code);
    }
  });
});

describe('sbk-pack --compress, --level, --threads', () => {
  const pack = (...args: string[]) => spawnSync(BIN('sbk-pack'), args, { input: '', encoding: 'utf8' });
  it.each([
    [['--compress', 'lz4'], /--compress takes gzip or zstd/],
    [['--compress', 'zstd', '--level', '0'], /--level takes 1\.\.19 for zstd/],
    [['--compress', 'zstd', '--level', '20'], /--level takes 1\.\.19 for zstd/],
    [['--level', '10'], /--level takes 1\.\.9 for gzip/],
    [['--compress', 'gzip', '--level', '0'], /--level takes 1\.\.9 for gzip/],
    [['--compress', 'zstd', '--threads', '0'], /--threads takes a whole number/],
  ])('%j is a usage error (2) with a one-line message', (args, msg) => {
    const r = pack(...args);
    expect(r.status).toBe(2);
    expect(r.stderr.split('\n')[0]).toMatch(msg);
  });

  it('--compress zstd --level 19 is taken (empty input is then bad input, 3)', () => {
    const r = pack('--compress', 'zstd', '--level', '19', '-o', '/dev/null');
    expect(r.status).toBe(3);
  });
});
