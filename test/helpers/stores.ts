// Synthetic stores for the planning tests (planRestore and planPrune in unit, sbk-plan as a
// binary): archives written into a directory, a chain of four, and manifests of a chain shape
// (one backup a day from a fixed Monday) as ArchiveFiles.
import type { ArchiveFile } from '../../src/stages/plan/chain.js';
import type { Manifest } from '../../src/formats/archive/archive.js';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { synthManifest, synthArchive } from '../fixtures/archives/synthetic.js';

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
