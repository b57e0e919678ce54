// Synthetic stores for the planning tests (planRestore and planPrune in unit, sbk-plan as a
// binary): archives written into a directory, a chain of four, and manifests of a chain shape
// (one backup a day from a fixed Monday) as ArchiveFiles; and for the stores of sbk-pack --store
// (DIR and s3://), a chain as the gzip members `sbk-pack -o -` writes.
import type { ArchiveFile } from '../../src/stages/plan/chain.js';
import type { Manifest } from '../../src/formats/archive/archive.js';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import tar from 'tar-stream';
import { ArchiveWriter } from '../../src/formats/archive/archive.js';
import { createGzipCompressor } from '../../src/formats/codecs/gzip.js';
import { synthManifest, synthArchive, synthTar } from '../fixtures/archives/synthetic.js';

export const DAY = 86_400;
export const T0 = Date.UTC(2026, 0, 5, 12) / 1000; // Monday 2026-01-05 12:00 UTC

export function fileOf(m: Manifest, dir = '/store'): ArchiveFile {
  return {
    path: `${dir}/${m.name}.tar.gz`,
    file: `${m.name}.tar.gz`,
    size: 1,
    container: m.container,
    time: m.time,
    full: m.full,
    name: m.name,
    manifest: m,
    legacy: false,
  };
}

/**
 * A store from a shape: 'F' a Full, 'I' an incremental on the previous backup, 'i<k>' an
 * incremental on the k-th backup (0-based), one backup every `step` seconds.
 */
export function store(shape: string[], step = DAY, container = 'c1', t0 = T0): { files: ArchiveFile[]; ms: Manifest[] } {
  const ms: Manifest[] = [];
  shape.forEach((s, i) => {
    const time = t0 + i * step;
    if (s === 'F') ms.push(synthManifest({ container, time, full: true }));
    else {
      const parent = s === 'I' ? ms[i - 1]! : ms[Number(s.slice(1))]!;
      ms.push(synthManifest({ container, time, full: false, parent }));
    }
  });
  return { files: ms.map((m) => fileOf(m)), ms };
}

/** Writes `m`'s synthetic archive into `dir` under its own name; returns `m`. */
export async function storeArchive(dir: string, m: Manifest, opts: Parameters<typeof synthArchive>[1] = {}): Promise<Manifest> {
  await writeFile(path.join(dir, `${m.name}.tar.gz`), await synthArchive(m, opts));
  return m;
}

/** F ← I1 ← I2 ← I3 for `container`, stored in `dir`; returns the manifests. */
export async function storeChain4(dir: string, container = 'c1', t0 = 1_700_000_000): Promise<Manifest[]> {
  const f = await storeArchive(dir, synthManifest({ container, time: t0, full: true }));
  const i1 = await storeArchive(dir, synthManifest({ container, time: t0 + 100, full: false, parent: f }));
  const i2 = await storeArchive(dir, synthManifest({ container, time: t0 + 200, full: false, parent: i1 }));
  const i3 = await storeArchive(dir, synthManifest({ container, time: t0 + 300, full: false, parent: i2 }));
  return [f, i1, i2, i3];
}

/** gzip as sbk-pack does (the parallel compressor): one member. */
export async function packGzip(tarBytes: Buffer): Promise<Buffer> {
  const gz = createGzipCompressor({ level: 1, threads: 2, blockSize: 128 * 1024 });
  const out: Buffer[] = [];
  gz.on('data', (c: Buffer) => out.push(c));
  const done = new Promise<void>((resolve, reject) => {
    gz.on('end', resolve);
    gz.on('error', reject);
  });
  gz.end(tarBytes);
  await done;
  return Buffer.concat(out);
}

/** An archive with a changelog entry (synthTar writes none). */
async function tarWithChangelog(m: Manifest, changelog: string, delta: Buffer): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: Buffer) => chunks.push(c));
  const ended = new Promise<void>((r) => pack.on('end', () => r()));
  const w = new ArchiveWriter(pack, { ...m, changelog: true });
  await w.start();
  await w.addMetaFile('config', Buffer.from('lxc.utsname = c1\n'), 0o644, new Date(m.time * 1000));
  const body = Buffer.from(changelog);
  await w.addChangelog((async function* () { yield body; })(), body.length);
  for (const v of m.volumes) await w.addDelta(v.name, (async function* () { yield delta; })());
  await w.finish();
  pack.finalize();
  await ended;
  return Buffer.concat(chunks);
}

/** Incompressible bytes, so members span many input chunks. */
export function noise(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed || 1;
  for (let i = 0; i < n; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

export interface MemberChain {
  manifests: Manifest[];
  members: Buffer[];
}

/** F ← I1 (with a changelog) ← I2 of c1 as the gzip members of `sbk-pack -o -` (the last one by the system gzip). */
export async function makeMemberChain(): Promise<MemberChain> {
  const f = synthManifest({ container: 'c1', time: 1_700_000_000, full: true });
  const i1 = synthManifest({ container: 'c1', time: 1_700_000_100, full: false, parent: f });
  const i2 = synthManifest({ container: 'c1', time: 1_700_000_200, full: false, parent: i1 });
  const members = [
    await packGzip(await synthTar(f, { deltas: { rootfs: noise(700_000, 1), home: noise(1000, 2) } })),
    await packGzip(await tarWithChangelog({ ...i1, changelog: true }, 'modified /etc/hostname\n', noise(300_000, 3))),
    // The system gzip: a header with a file name (FNAME), a different deflate encoder.
    (await execa('gzip', ['-c', '-N', '-9'], { input: await synthTar(i2), encoding: 'buffer' })).stdout as unknown as Buffer,
  ];
  return { manifests: [f, { ...i1, changelog: true }, i2], members };
}

/** One archive of `container` whose rootfs delta is `mib` MiB of incompressible bytes, as one gzip member: for memory bounds. */
export async function bigMember(container: string, mib: number, time = 1_700_000_000): Promise<Buffer> {
  const m = synthManifest({ container, time, full: true });
  return packGzip(await synthTar(m, { deltas: { rootfs: noise(mib * 1024 * 1024, 11), home: noise(1000, 2) } }));
}

/** Peak RSS in MiB of a binary reading `input` on stdin (/usr/bin/time), with its result. */
export async function peakRss(bin: string, args: string[], input: Buffer, env: Record<string, string> = {}) {
  const r = await execa('/usr/bin/time', ['-f', 'PEAK_RSS_KIB %M', bin, ...args], { input, env, reject: false, encoding: 'utf8' });
  const m = /PEAK_RSS_KIB (\d+)/.exec(r.stderr);
  return { ...r, stderr: r.stderr.replace(/PEAK_RSS_KIB \d+\n?/, ''), rssMiB: m ? Number(m[1]) / 1024 : Infinity };
}
