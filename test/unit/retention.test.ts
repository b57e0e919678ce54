// Retention planning on synthetic chains (no BTRFS): restic's --keep-* reading, chains kept
// whole, unrestorable backups left alone with their ancestors, a safe deletion order. The
// binary, sbk-plan --prune, is run in test/e2e/plan-prune.test.ts.
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { applyPolicy, isoWeek, planPrune, policyIsEmpty, type KeepPolicy } from '../../src/stages/plan/prune.js';
import { chainTo, type ArchiveFile } from '../../src/stages/plan/chain.js';
import { synthManifest } from '../fixtures/archives/synthetic.js';
import { DAY, T0, fileOf, store } from '../helpers/stores.js';

const utc = (iso: string) => Date.parse(iso) / 1000;

const names = (as: ArchiveFile[]) => as.map((a) => a.name);
const kept = (p: ReturnType<typeof planPrune>) => p.decisions.filter((d) => d.keep).map((d) => d.archive.name);

describe('isoWeek', () => {
  it.each([
    ['2021-01-03T12:00:00Z', '2020-W53'], // a Sunday: still the last week of 2020
    ['2021-01-04T00:00:00Z', '2021-W01'],
    ['2024-12-30T08:00:00Z', '2025-W01'], // a Monday in December, week 1 of 2025
    ['2026-01-01T00:00:00Z', '2026-W01'], // a Thursday
    ['2026-11-08T23:59:59Z', '2026-W45'],
    ['2026-11-09T00:00:00Z', '2026-W46'],
  ])('%s is %s', (iso, week) => {
    expect(isoWeek(utc(iso), true)).toBe(week);
  });
});

describe('applyPolicy (restic forget semantics)', () => {
  const at = (isos: string[]) => isos.map((iso, i) => ({ name: `b${i}`, time: utc(iso) }));

  it('--keep-last N keeps the N newest', () => {
    const bs = Array.from({ length: 6 }, (_, i) => ({ name: `b${i}`, time: T0 + i * 60 }));
    expect([...applyPolicy(bs, { last: 2 }, true).keys()]).toEqual(['b5', 'b4']);
  });

  it('--keep-daily keeps the newest of each of the last N days that have backups, and the oldest while count is left', () => {
    const bs = at([
      '2026-01-01T01:00:00Z',
      '2026-01-01T23:00:00Z',
      '2026-01-03T10:00:00Z',
      '2026-01-03T11:00:00Z',
      '2026-01-04T09:00:00Z',
    ]);
    expect([...applyPolicy(bs, { daily: 2 }, true).keys()]).toEqual(['b4', 'b3']);
    // Four days asked, three days have backups: those three, plus the oldest backup.
    const k = applyPolicy(bs, { daily: 4 }, true);
    expect([...k.keys()]).toEqual(['b4', 'b3', 'b1', 'b0']);
    expect(k.get('b0')).toEqual(['daily 2026-01-01 (oldest)']);
  });

  it('--keep-weekly and --keep-monthly use ISO weeks and calendar months; rules combine', () => {
    const bs = at([
      '2025-11-15T00:00:00Z',
      '2025-12-20T00:00:00Z',
      '2025-12-29T00:00:00Z', // 2026-W01
      '2026-01-02T00:00:00Z', // 2026-W01
      '2026-01-06T00:00:00Z', // 2026-W02
    ]);
    expect([...applyPolicy(bs, { weekly: 2 }, true).keys()]).toEqual(['b4', 'b3']);
    expect([...applyPolicy(bs, { monthly: 2 }, true).keys()]).toEqual(['b4', 'b2']);
    const both = applyPolicy(bs, { last: 1, monthly: 3 }, true);
    expect([...both.keys()]).toEqual(['b4', 'b2', 'b0']);
    expect(both.get('b4')).toEqual(['last', 'monthly 2026-01']);
  });

  it('an empty policy keeps nothing (and sbk-plan refuses it)', () => {
    expect(policyIsEmpty({})).toBe(true);
    expect(policyIsEmpty({ last: 0, daily: 0 })).toBe(true);
    expect(policyIsEmpty({ weekly: 1 })).toBe(false);
    expect(applyPolicy([{ name: 'a', time: 1 }], {}).size).toBe(0);
  });
});

describe('planPrune on chain shapes', () => {
  it('one long chain: keeping the newest keeps the whole chain', () => {
    const { files } = store(['F', 'I', 'I', 'I', 'I']);
    const p = planPrune(files, 'c1', { last: 1 }, { utc: true });
    expect(p.remove).toEqual([]);
    expect(p.decisions[4]!.reasons).toEqual(['needed by c1_' + files[4]!.time]);
  });

  it('two chains: the older chain goes, newest first', () => {
    const { files } = store(['F', 'I', 'I', 'F', 'I', 'I']);
    const p = planPrune(files, 'c1', { last: 3 }, { utc: true });
    expect(kept(p)).toEqual(names(files.slice(3)).reverse());
    expect(names(p.remove)).toEqual(names(files.slice(0, 3)).reverse());
  });

  it('a kept incremental keeps its Full and every link, even when the policy skips them', () => {
    // F I I I | F I : keep-last 1 plus monthly 2 (all in one month) keeps the newest and the oldest.
    const { files } = store(['F', 'I', 'I', 'I', 'F', 'I'], 3600);
    const p = planPrune(files, 'c1', { last: 1, monthly: 2 }, { utc: true });
    // The oldest backup (the first Full) is kept as the oldest; the middle of chain 1 goes.
    expect(kept(p)).toEqual([files[5]!.name, files[4]!.name, files[0]!.name]);
    expect(names(p.remove)).toEqual([files[3]!.name, files[2]!.name, files[1]!.name]);
  });

  it('a branch: incrementals on an older point of the chain (restarted from an old parent)', () => {
    // F I1 I2 and I3 on I1 (I2's set was lost): keeping I3 keeps F and I1, I2 may go.
    const { files } = store(['F', 'I', 'I', 'i1']);
    const p = planPrune(files, 'c1', { last: 1 }, { utc: true });
    expect(kept(p)).toEqual([files[3]!.name, files[1]!.name, files[0]!.name]);
    expect(names(p.remove)).toEqual([files[2]!.name]);
  });

  it('daily over several backups a day across two chains', () => {
    const { files } = store(['F', 'I', 'I', 'I', 'F', 'I', 'I', 'I'], 8 * 3600); // 3 a day
    // Days: 01-05 b0 b1 | 01-06 b2 b3 b4(F) | 01-07 b5 b6 b7.
    const p = planPrune(files, 'c1', { daily: 2 }, { utc: true });
    // The newest of each of the last two days: b7 and b4; b7 needs b4..b6.
    expect(kept(p)).toEqual(names(files.slice(4)).reverse());
    expect(p.decisions.find((d) => d.archive === files[4])!.reasons).toEqual(['daily 2026-01-06', `needed by ${files[7]!.name}`]);
    expect(names(p.remove)).toEqual(names(files.slice(0, 4)).reverse());
    // Three days asked, three days there: b1 is the newest of 01-05; its chain keeps b0.
    const p3 = planPrune(files, 'c1', { daily: 3 }, { utc: true });
    expect(names(p3.remove)).toEqual([files[3]!.name, files[2]!.name]);
  });

  it('a backup whose chain has a gap is kept, with the ancestors that are there, and reported', () => {
    const { files } = store(['F', 'I', 'I', 'I', 'F', 'I']);
    const withoutI1 = files.filter((_, i) => i !== 1); // I2 and I3 lose their chain
    const p = planPrune(withoutI1, 'c1', { last: 1 }, { utc: true });
    expect(names(p.unrestorable.map((d) => d.archive))).toEqual([files[3]!.name, files[2]!.name]);
    // I1 may be put back: the Full before the gap must stay (which one is not known: all older stay).
    expect(p.remove).toEqual([]);
    expect(p.decisions.find((d) => d.archive === files[3])!.reasons[0]).toMatch(/^not restorable: gap in the chain/);
    expect(p.decisions.find((d) => d.archive === files[0])!.reasons).toContain(`may be needed by ${files[2]!.name}`);
    // A link that fails its UUID check: the walk by name reaches the Full; only that chain is kept.
    const { files: f2, ms } = store(['F', 'I', 'F', 'I', 'I']);
    const bad = synthManifest({ container: 'c1', time: ms[1]!.time, full: false, parent: ms[0]!, parentUuids: { rootfs: 'wrong' } });
    const q = planPrune([f2[0]!, fileOf(bad), f2[2]!, f2[3]!, f2[4]!], 'c1', { last: 1 }, { utc: true });
    expect(names(q.unrestorable.map((d) => d.archive))).toEqual([bad.name]);
    expect(q.remove).toEqual([]);
  });

  it('unreadable archives are never removed; foreign and duplicate ones are not even listed', () => {
    const { files } = store(['F', 'I', 'F', 'I']);
    const unreadable: ArchiveFile = { ...files[1]!, manifest: undefined, problem: 'unreadable: gzip data is corrupt', name: files[1]!.name };
    const foreign: ArchiveFile = { ...fileOf(synthManifest({ container: 'web', time: T0 + 5, full: true })), container: 'c1', problem: 'holds a backup of container web' };
    const p = planPrune([files[0]!, unreadable, files[2]!, files[3]!, foreign], 'c1', { last: 1 }, { utc: true });
    expect(p.decisions.map((d) => d.archive)).not.toContain(foreign);
    expect(p.decisions.find((d) => d.archive === unreadable)!.keep).toBe(true);
    // The unreadable one (no manifest) might be an old-tool link: older archives without a manifest are kept; F has one.
    expect(names(p.remove)).toEqual([files[0]!.name]);
  });

  it('archives of the original tool (no manifest) chain by name order', () => {
    const mk = (time: number, full: boolean): ArchiveFile => ({
      path: `/store/old_${time}${full ? '_Full' : ''}.tar.gz`,
      file: `old_${time}${full ? '_Full' : ''}.tar.gz`,
      size: 1,
      container: 'old',
      time,
      full,
      name: `old_${time}${full ? '_Full' : ''}`,
      legacy: true,
    });
    const files = [mk(100, true), mk(200, false), mk(300, true), mk(400, false), mk(500, false)];
    const p = planPrune(files, 'old', { last: 1 }, { utc: true });
    expect(names(p.remove)).toEqual(['old_200', 'old_100_Full']);
  });

  // Random stores: chains of random shapes, random policies. Whatever is kept restores, and
  // deleting in the planned order never leaves a remaining backup unrestorable at any step.
  it('property: kept chains are whole; the deletion order keeps every remaining backup restorable', () => {
    const shapeArb = fc
      .array(fc.nat(), { minLength: 1, maxLength: 14 })
      .map((xs) => xs.map((x, i) => (i === 0 || x % 4 === 0 ? 'F' : x % 4 === 1 ? `i${x % i}` : 'I')));
    const policyArb = fc.record(
      { last: fc.nat(4), daily: fc.nat(3), weekly: fc.nat(2), monthly: fc.nat(2) },
      { requiredKeys: [] },
    ) as fc.Arbitrary<KeepPolicy>;
    fc.assert(
      fc.property(shapeArb, policyArb, fc.integer({ min: 3600, max: 9 * DAY }), (shape, policy, step) => {
        fc.pre(!policyIsEmpty(policy));
        const { files } = store(shape, step);
        const p = planPrune(files, 'c1', policy, { utc: true });
        const keptSet = new Set(p.decisions.filter((d) => d.keep).map((d) => d.archive));
        // The newest backup is always kept.
        expect(keptSet.has(files[files.length - 1]!)).toBe(true);
        // Every kept backup's chain is kept.
        for (const a of keptSet) for (const link of chainTo(a, files).archives) expect(keptSet.has(link)).toBe(true);
        // Newest first.
        for (let i = 1; i < p.remove.length; i++) expect(p.remove[i - 1]!.time).toBeGreaterThan(p.remove[i]!.time);
        // Deleting one by one in that order: everything left restores at every step.
        let left = [...files];
        for (const r of p.remove) {
          left = left.filter((a) => a !== r);
          for (const a of left) expect(chainTo(a, left).problem).toBeUndefined();
        }
        expect(left.length).toBe(keptSet.size);
      }),
      { numRuns: 300 },
    );
  });
});

