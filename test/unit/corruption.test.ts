// Corruption of stored archives, as `sbk-unpack --verify` (and so every restore, which reads
// the same way) sees it: 240 seeded random byte flips and truncations over several real
// archives, tar cuts exactly at entry boundaries, and a missing trailer. Each is detected (a
// clean SbkError: corrupt 4, or bad input 3) or provably harmless (the archive still
// decompresses to exactly the original bytes, e.g. a flip in the gzip header's mtime). The
// battery runs for each codec (gzip, zstd: the fixtures recompressed with `zstd --check`), read
// as a stream (member by member, as stdin is) and as a file (the codec's decompressor).
import { describe, it, expect, afterAll } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { verifyInputs } from '../../src/stages/unpack/verify.js';
import { openArchiveFile, openArchiveStream } from '../../src/formats/archive/open.js';
import { SbkError } from '../../src/core/errors.js';
import { Log } from '../../src/core/log.js';
import { ROOT } from '../helpers/sandbox.js';

const FIXTURES = path.join(ROOT, 'test/fixtures/archives');
const gzipArchives = readdirSync(FIXTURES)
  .filter((n) => /^fx_\d+(_Full)?\.tar\.gz$/.test(n))
  .map((n) => ({ name: n, bytes: readFileSync(path.join(FIXTURES, n)) }));

const zstd = (args: string[], input: Buffer) => spawnSync('zstd', ['-q', ...args], { input, maxBuffer: 1 << 28 });

/** How each codec compresses and decompresses, the battery's own oracle (the standard tools). */
const CODECS = {
  gzip: {
    compress: (b: Buffer) => zlib.gzipSync(b),
    decompress: (b: Buffer) => zlib.gunzipSync(b),
  },
  zstd: {
    compress: (b: Buffer) => zstd(['-3', '--check', '-c'], b).stdout,
    decompress: (b: Buffer) => {
      const r = zstd(['-d', '-c'], b);
      if (r.status !== 0) throw new Error(r.stderr.toString());
      return r.stdout;
    },
  },
} as const;
type CodecName = keyof typeof CODECS;

const SCRATCH = mkdtempSync(path.join(tmpdir(), 'sbk-corruption-'));
afterAll(() => rmSync(SCRATCH, { recursive: true, force: true }));
let files = 0;

/** Small deterministic PRNG (mulberry32): the same mutations on every run. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Opener = 'stream' | 'file';

async function verifyAs(opener: Opener, bytes: Buffer): Promise<SbkError | undefined> {
  const log = new Log('test', 0);
  let open = () => openArchiveStream(Readable.from([bytes]), 'mutant');
  if (opener === 'file') {
    const file = path.join(SCRATCH, `mutant-${files++}`);
    writeFileSync(file, bytes);
    open = () => openArchiveFile(file);
  }
  try {
    await verifyInputs([{ source: 'mutant', open }], {
      log,
      signal: new AbortController().signal,
    });
    return undefined;
  } catch (err) {
    if (err instanceof SbkError) return err;
    throw err; // anything else is a bug: fail the test with it
  }
}

function decompressOrNull(codec: CodecName, b: Buffer): Buffer | null {
  try {
    return CODECS[codec].decompress(b);
  } catch {
    return null;
  }
}

/** Offsets of tar entry boundaries (header starts) in an uncompressed tar. */
function entryBoundaries(tar: Buffer): number[] {
  const out: number[] = [];
  let off = 0;
  while (off + 512 <= tar.length) {
    const h = tar.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    out.push(off);
    const size = parseInt(h.subarray(124, 136).toString('latin1').replace(/\0.*$/, '').trim() || '0', 8);
    off += 512 + Math.ceil(size / 512) * 512;
  }
  out.push(off); // the end-of-archive blocks: a cut here drops nothing but the zero blocks
  return out;
}

/** Names and contents of a tar's entries. */
async function entriesOf(tarBytes: Buffer): Promise<[string, string][]> {
  const out: [string, string][] = [];
  const x = tar.extract();
  Readable.from([tarBytes]).pipe(x);
  for await (const e of x) {
    const chunks: Buffer[] = [];
    for await (const c of e) chunks.push(c as Buffer);
    out.push([e.header.name, Buffer.concat(chunks).toString('base64')]);
  }
  return out;
}

describe.each([
  ['gzip', 'stream'],
  ['gzip', 'file'],
  ['zstd', 'stream'],
  ['zstd', 'file'],
] as [CodecName, Opener][])('corrupt %s archives, read as a %s, are detected by --verify (and so by restore)', (codec, opener) => {
  const { compress, decompress } = CODECS[codec];
  const archives = gzipArchives.map((a) => ({ name: a.name, bytes: codec === 'gzip' ? a.bytes : compress(zlib.gunzipSync(a.bytes)) }));
  const verify = (bytes: Buffer) => verifyAs(opener, bytes);

  it('has fixtures to mutate', () => {
    expect(archives.length).toBeGreaterThanOrEqual(2);
  });

  it('every fixture verifies as it is', async () => {
    for (const a of archives) expect(await verify(a.bytes)).toBeUndefined();
  });

  it('240 random byte flips and truncations: detected, or the content is exactly unchanged', async () => {
    const rand = rng(0x5b1c);
    let detected = 0;
    let harmless = 0;
    for (let i = 0; i < 240; i++) {
      const a = archives[i % archives.length]!;
      const original = decompress(a.bytes);
      const m = Buffer.from(a.bytes);
      let mutant: Buffer;
      if (i % 3 === 2) {
        mutant = m.subarray(0, Math.floor(rand() * m.length)); // truncation
      } else {
        const at = Math.floor(rand() * m.length);
        m[at]! ^= 1 + Math.floor(rand() * 255);
        mutant = m;
      }
      const err = await verify(mutant);
      if (err) {
        expect([3, 4]).toContain(err.exitCode);
        detected++;
      } else {
        const out = decompressOrNull(codec, mutant);
        expect(out && out.equals(original), `mutation ${i} of ${a.name} passed verification with different content`).toBe(true);
        harmless++;
      }
    }
    expect(detected).toBeGreaterThan(200);
    expect(detected + harmless).toBe(240);
  });

  it('a tar cut exactly at each entry boundary is detected (the trailer is missing)', async () => {
    for (const a of archives) {
      const plain = decompress(a.bytes);
      const bounds = entryBoundaries(plain);
      const last = bounds.at(-2)!; // the trailer's header
      for (const b of bounds) {
        const err = await verify(compress(plain.subarray(0, b)));
        if (b > last) {
          expect(err).toBeUndefined(); // only the end-of-archive zero blocks were cut
        } else {
          expect(err?.exitCode, `cut at ${b} of ${a.name}`).toBeDefined();
          expect([3, 4]).toContain(err!.exitCode);
        }
      }
    }
  });

  it('flipped bytes inside the uncompressed tar are detected wherever they hit the content', async () => {
    const rand = rng(77);
    for (const a of archives) {
      const plain = decompress(a.bytes);
      const end = entryBoundaries(plain).at(-1)!;
      for (let i = 0; i < 30; i++) {
        const t = Buffer.from(plain);
        const at = Math.floor(rand() * end);
        t[at]! ^= 0x20;
        const err = await verify(compress(t));
        // A flip in tar padding or in header fields sbk does not use (uname, mtime…) changes no
        // entry name or content; anything else must be caught.
        if (err) expect([3, 4]).toContain(err.exitCode);
        else expect(await entriesOf(t), `flip at ${at} of ${a.name}`).toEqual(await entriesOf(plain));
      }
    }
  });
});
