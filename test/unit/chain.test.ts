// Chain planning on synthetic archives (no BTRFS): linking by manifest, --at, gaps, foreign
// containers, unrelated Fulls, unreadable archives, the original Subutai layout.
import { describe, it, expect } from 'vitest';
import { rm, writeFile, truncate, stat } from 'node:fs/promises';
import path from 'node:path';
import { scanStore, planRestore, parseAtTime, listRows, type ArchiveFile } from '../../src/stages/plan/chain.js';
import { readArchiveHead } from '../../src/formats/archive/open.js';
import { linkProblem } from '../../src/formats/archive/links.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';
import type { Manifest } from '../../src/formats/archive/archive.js';
import { synthManifest, synthArchive, legacyArchive } from '../fixtures/archives/synthetic.js';
import { storeArchive, storeChain4 } from '../helpers/stores.js';
import { tempDirEach } from '../helpers/tempdir.js';

let dir: string;
tempDirEach('sbk-chain-', (d) => (dir = d));

const fileOf = (m: Manifest) => `${m.name}.tar.gz`;
const store = (m: Manifest, opts: Parameters<typeof synthArchive>[1] = {}) => storeArchive(dir, m, opts);

/** F ← I1 ← I2 ← I3 for `container`, stored; returns the manifests. */
const chain4 = (container?: string, t0?: number) => storeChain4(dir, container, t0);

async function plan(container: string, at?: number) {
  return planRestore(await scanStore(dir, container), container, dir, at);
}
const names = (p: { chain: ArchiveFile[] }) => p.chain.map((a) => a.name);

async function planError(container: string, at?: number): Promise<SbkError> {
  try {
    await plan(container, at);
  } catch (err) {
    expect(err).toBeInstanceOf(SbkError);
    return err as SbkError;
  }
  throw new Error('expected planRestore to fail');
}

describe('planRestore', () => {
  it('plans the Full and every incremental up to the newest, oldest first', async () => {
    const ms = await chain4();
    const p = await plan('c1');
    expect(names(p)).toEqual(ms.map((m) => m.name));
    expect(p.chain.every((a) => path.isAbsolute(a.path))).toBe(true);
  });

  it('--at picks the newest backup at or before the time', async () => {
    const [f, i1, i2] = await chain4();
    expect(names(await plan('c1', i2!.time - 1))).toEqual([f!.name, i1!.name]);
    expect(names(await plan('c1', i2!.time))).toEqual([f!.name, i1!.name, i2!.name]);
    expect(names(await plan('c1', f!.time))).toEqual([f!.name]);
    const e = await planError('c1', f!.time - 1);
    expect(e.exitCode).toBe(ExitCode.notFound);
    expect(e.message).toMatch(/no backup of c1 at or before .*the oldest is c1_1700000000_Full/);
  });

  it('never mixes in another container whose name shares a prefix (web vs web_2)', async () => {
    const web = await chain4('web', 1_700_000_000);
    const web2 = await chain4('web_2', 1_700_000_050);
    expect(names(await plan('web'))).toEqual(web.map((m) => m.name));
    expect(names(await plan('web_2'))).toEqual(web2.map((m) => m.name));
    // web_2's archives are newer than web's, and their file names start with "web_"
    expect(names(await plan('web', 1_700_000_260))).toEqual(web.slice(0, 3).map((m) => m.name));
  });

  it('links by the recorded parent, not by order: an unrelated Full in between is skipped', async () => {
    const f1 = await store(synthManifest({ container: 'c1', time: 100, full: true }));
    const i1 = await store(synthManifest({ container: 'c1', time: 200, full: false, parent: f1 }));
    await store(synthManifest({ container: 'c1', time: 300, full: true }));
    const i3 = await store(synthManifest({ container: 'c1', time: 400, full: false, parent: i1 }));
    expect(names(await plan('c1'))).toEqual([f1.name, i1.name, i3.name]);
  });

  it('names the missing parent of a gap', async () => {
    const [, i1] = await chain4();
    await rm(path.join(dir, fileOf(i1!)));
    const e = await planError('c1');
    expect(e.exitCode).toBe(ExitCode.notFound);
    expect(e.message).toBe(`gap in the chain: c1_1700000200 needs its parent ${i1!.name}, which is not in the store`);
    // Points before the gap still restore.
    expect(names(await plan('c1', i1!.time - 1))).toEqual(['c1_1700000000_Full']);
  });

  it('refuses a link whose volume UUIDs do not match (a different backup of the same name)', async () => {
    const f = await store(synthManifest({ container: 'c1', time: 100, full: true }));
    await store(synthManifest({ container: 'c1', time: 200, full: false, parent: f, parentUuids: { home: 'ffffffff-0000-4000-8000-000000000000' } }));
    const e = await planError('c1');
    expect(e.exitCode).toBe(ExitCode.corrupt);
    expect(e.message).toMatch(/broken chain: volume home of c1_200 was sent against snapshot ffffffff-.*but the home of c1_100_Full is/);
  });

  it('reports an unreadable parent as such', async () => {
    const [, i1] = await chain4();
    await writeFile(path.join(dir, fileOf(i1!)), 'this is not gzip\n');
    const e = await planError('c1');
    expect(e.message).toMatch(/c1_1700000200 needs its parent c1_1700000100, but c1_1700000100\.tar\.gz unreadable: .*not an sbk archive/);
    expect(e.exitCode).toBe(ExitCode.badInput);
  });

  it('fails when the newest archive itself is unreadable, instead of restoring an older point', async () => {
    const ms = await chain4();
    const p = path.join(dir, fileOf(ms[3]!));
    await truncate(p, 20);
    const e = await planError('c1');
    expect(e.message).toMatch(/^c1_1700000300\.tar\.gz: unreadable: /);
    expect(e.exitCode).toBe(ExitCode.corrupt);
  });

  it('ignores a file named for the container that holds another container', async () => {
    const [f] = await chain4('c1');
    const other = synthManifest({ container: 'c2', time: 1_800_000_000, full: true });
    await writeFile(path.join(dir, 'c1_1800000000_Full.tar.gz'), await synthArchive(other));
    const warnings: string[] = [];
    const all = await scanStore(dir, 'c1', { warn: (m) => warnings.push(m) });
    expect(warnings.join('\n')).toMatch(/c1_1800000000_Full\.tar\.gz: holds a backup of container c2/);
    expect(planRestore(all, 'c1', dir).target.name).toBe('c1_1700000300');
    expect(f).toBeDefined();
  });

  it('says so when there is no backup at all', async () => {
    await chain4('web');
    const e = await planError('we');
    expect(e.exitCode).toBe(ExitCode.notFound);
    expect(e.message).toBe(`no backup of we in ${dir}`);
  });

  it('reads only the first tar entry: a damaged tail does not stop planning', async () => {
    const m = synthManifest({ container: 'c1', time: 100, full: true });
    const big = Buffer.alloc(4 * 1024 * 1024);
    for (let i = 0; i < big.length; i++) big[i] = (i * 2654435761) >>> 24;
    await store(m, { deltas: { rootfs: big } });
    const p = path.join(dir, fileOf(m));
    const size = (await stat(p)).size;
    await truncate(p, Math.floor(size / 2));
    expect((await readArchiveHead(p)).manifest?.name).toBe(m.name);
  });
});

describe('original Subutai archives (no manifest)', () => {
  it('chains them by name order from the newest Full', async () => {
    const d = { rootfs: Buffer.from('x'), home: Buffer.from('y') };
    await writeFile(path.join(dir, 'c1_1000_Full.tar.gz'), await legacyArchive(d));
    await writeFile(path.join(dir, 'c1_2000.tar.gz'), await legacyArchive(d));
    await writeFile(path.join(dir, 'c1_3000_Full.tar.gz'), await legacyArchive(d));
    await writeFile(path.join(dir, 'c1_4000.tar.gz'), await legacyArchive(d));
    await writeFile(path.join(dir, 'c1_5000.tar.gz'), await legacyArchive(d));
    await writeFile(path.join(dir, 'c1_2_6000_Full.tar.gz'), await legacyArchive(d)); // container c1_2
    const all = await scanStore(dir, 'c1');
    expect(all.every((a) => a.legacy)).toBe(true);
    expect(names(planRestore(all, 'c1', dir))).toEqual(['c1_3000_Full', 'c1_4000', 'c1_5000']);
    expect(names(planRestore(all, 'c1', dir, 2500))).toEqual(['c1_1000_Full', 'c1_2000']);
  });

  it('refuses incrementals without a Full before them', async () => {
    await writeFile(path.join(dir, 'c1_2000.tar.gz'), await legacyArchive({ rootfs: Buffer.from('x') }));
    const e = await planError('c1');
    expect(e.message).toBe('no Full backup of c1 at or before c1_2000');
    expect(e.exitCode).toBe(ExitCode.notFound);
  });

  it('an unreadable archive inside an old-tool chain breaks it', async () => {
    await writeFile(path.join(dir, 'c1_1000_Full.tar.gz'), await legacyArchive({ rootfs: Buffer.from('x') }));
    await writeFile(path.join(dir, 'c1_2000.tar.gz'), Buffer.from([0x1f, 0x8b, 8, 0, 1, 2, 3]));
    await writeFile(path.join(dir, 'c1_3000.tar.gz'), await legacyArchive({ rootfs: Buffer.from('x') }));
    const e = await planError('c1');
    expect(e.message).toMatch(/^c1_2000\.tar\.gz unreadable: /);
  });
});

describe('linkProblem', () => {
  const f = synthManifest({ container: 'c1', time: 100, full: true });
  it('accepts a child of its parent, and a volume sent whole', () => {
    const i = synthManifest({ container: 'c1', time: 200, full: false, parent: f, volumes: ['rootfs', 'home', 'opt'] });
    expect(i.volumes.find((v) => v.name === 'opt')!.parentUuid).toBeNull();
    expect(linkProblem(i, f)).toBeUndefined();
  });
  it('refuses a child of another parent, container, or an older child', () => {
    const other = synthManifest({ container: 'c1', time: 150, full: true });
    const i = synthManifest({ container: 'c1', time: 200, full: false, parent: f });
    expect(linkProblem(i, other)).toMatch(/the parent of c1_200 is c1_100_Full, not c1_150_Full/);
    expect(linkProblem({ ...i, container: 'c2' }, f)).toMatch(/is a backup of c2/);
    expect(linkProblem({ ...i, time: 50 }, f)).toMatch(/not older/);
    expect(linkProblem(f, f)).toMatch(/is a Full backup/);
  });
});

describe('parseAtTime', () => {
  it('reads unix seconds', () => {
    expect(parseAtTime('1477298237')).toBe(1477298237);
  });
  it('reads ISO 8601 with a zone', () => {
    expect(parseAtTime('2016-10-24T08:37:17Z')).toBe(1477298237);
    expect(parseAtTime('2016-10-24T10:37:17+02:00')).toBe(1477298237);
    expect(parseAtTime('2016-10-24T10:37:17+0200')).toBe(1477298237);
    expect(parseAtTime('2016-10-24T08:37:17.900Z')).toBe(1477298237);
    expect(parseAtTime('2016-10-24 08:37Z')).toBe(1477298220);
    expect(parseAtTime('2016-10-24T22:37:17+14:00')).toBe(1477298237);
    expect(parseAtTime('2016-10-23T20:37:17-12:00')).toBe(1477298237);
    expect(parseAtTime('2016-10-24T08:37:17-00:00')).toBe(1477298237);
    expect(parseAtTime('2024-02-29T00:00Z')).toBe(Date.UTC(2024, 1, 29) / 1000);
  });
  it('reads a date-time without a zone as local time, a date as local midnight', () => {
    expect(parseAtTime('2016-10-24T08:37:17')).toBe(new Date(2016, 9, 24, 8, 37, 17).getTime() / 1000);
    expect(parseAtTime('2016-10-24')).toBe(new Date(2016, 9, 24).getTime() / 1000);
  });
  it('reads years 0000–0099 as written, not as 1900–1999', () => {
    expect(parseAtTime('0001-01-01T00:00:00Z')).toBe(-62135596800);
    expect(parseAtTime('0099-12-31T23:59:59Z')).toBe(-59011459201);
    expect(parseAtTime('1999-12-31T23:59:59Z')).toBe(946684799);
    const local = new Date(0);
    local.setFullYear(50, 5, 1);
    local.setHours(12, 0, 0, 0);
    expect(parseAtTime('0050-06-01T12:00')).toBe(local.getTime() / 1000);
  });
  it('refuses anything else with a usage error', () => {
    for (const bad of [
      '0099-02-29', 'yesterday', '2016-02-31', '2016-13-01', '24.10.2016', '', '1e9', '2016-10-24T25:00',
      // impossible zone offsets: hours > 14, minutes > 59, beyond ±14:00
      '2026-12-01T18:00:00+25:00', '2026-12-01T18:00:00-25:00', '2026-12-01T18:00:00+99:00', '2026-12-01T18:00:00+02:60',
      '2026-12-01T18:00:00+0275', '2026-12-01T18:00:00+14:01', '2026-12-01T18:00:00-14:30', '2026-12-01T18:00+15',
      // impossible dates and times
      '2026-02-30', '2026-02-29T00:00Z', '2026-00-10', '2026-12-00', '2026-12-32', '2026-04-31T12:00Z', '2026-12-01T24:00',
      '2026-12-01T24:01', '2026-12-01T12:60', '2026-12-01T12:00:60Z', '2026-12-01T12:00:61',
    ]) {
      expect(() => parseAtTime(bad), bad).toThrow(SbkError);
      try {
        parseAtTime(bad);
      } catch (err) {
        expect((err as SbkError).exitCode).toBe(ExitCode.usage);
      }
    }
  });
});

describe('listRows', () => {
  it('gives every backup its chain state', async () => {
    const [, i1] = await chain4();
    await rm(path.join(dir, fileOf(i1!)));
    const rows = listRows(await scanStore(dir, 'c1'));
    expect(rows.map((r) => [r.name, r.kind, r.chain, r.length ?? null])).toEqual([
      ['c1_1700000000_Full', 'full', 'complete', 1],
      ['c1_1700000200', 'incremental', 'broken', null],
      ['c1_1700000300', 'incremental', 'broken', null],
    ]);
    expect(rows[1]!.problem).toMatch(/needs its parent c1_1700000100/);
    expect(rows[1]!.parent).toBe('c1_1700000100');
  });
});

