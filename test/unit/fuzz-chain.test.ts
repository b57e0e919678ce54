// Property-based fuzzing of the restore planner's pure entry points (src/stages/plan/chain.ts: planRestore,
// chainTo, listRows, linkProblem, parseAtTime) on random stores: parents named right and wrong,
// UUIDs that match or not, loops, gaps, unreadable, foreign and legacy archives, huge times.
// Whatever the store, planning gives a chain that really links (a Full first, each archive sent
// against the one before it) or a one-line SbkError; listing never fails. Fixed seeds.
import fc from 'fast-check';
import { describe, it, expect } from 'vitest';
import { planRestore, chainTo, listRows, parseAtTime, type ArchiveFile } from '../../src/stages/plan/chain.js';
import { linkProblem } from '../../src/formats/archive/links.js';
import type { Manifest } from '../../src/formats/archive/archive.js';
import { backupName } from '../../src/core/layout.js';
import { SbkError, ExitCode, type ExitCodeValue } from '../../src/core/errors.js';

const DIR = '/backups';
const CONTAINERS = ['c1', 'c1_2', 'web'];
const UUIDS = ['u0', 'u1', 'u2', 'u3', 'u4'];
const VOLS = ['rootfs', 'home'];

interface GenArchive {
  container: string;
  time: number;
  full: boolean;
  legacy: boolean;
  foreign: boolean;
  parent: number | 'none' | 'empty';
  volumes: { name: string; uuid: string; parentUuid: string | null }[];
  problem: boolean;
  problemCode: ExitCodeValue;
}

const genArchive: fc.Arbitrary<GenArchive> = fc.record({
  container: fc.constantFrom(...CONTAINERS),
  time: fc.oneof({ weight: 8, arbitrary: fc.integer({ min: 1, max: 30 }) }, { weight: 1, arbitrary: fc.maxSafeNat() }),
  full: fc.boolean(),
  legacy: fc.oneof({ weight: 5, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  foreign: fc.oneof({ weight: 8, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  parent: fc.oneof({ weight: 6, arbitrary: fc.nat(20) }, { weight: 1, arbitrary: fc.constantFrom('none' as const, 'empty' as const) }),
  volumes: fc.uniqueArray(fc.record({ name: fc.constantFrom(...VOLS), uuid: fc.constantFrom(...UUIDS), parentUuid: fc.option(fc.constantFrom(...UUIDS), { nil: null }) }), {
    minLength: 1,
    maxLength: 2,
    selector: (v) => v.name,
  }),
  problem: fc.oneof({ weight: 6, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
  problemCode: fc.constantFrom<ExitCodeValue>(ExitCode.failure, ExitCode.badInput, ExitCode.corrupt, ExitCode.notFound, ExitCode.conflict),
});

/** A store as scanStore makes it: oldest first, foreign and unreadable archives marked. */
function store(gens: GenArchive[]): ArchiveFile[] {
  const named = gens.map((g) => ({ g, name: backupName(g.container, g.time, g.full) }));
  const out = named.map(({ g, name }): ArchiveFile => {
    const a: ArchiveFile = { path: `${DIR}/${name}.tar.gz`, file: `${name}.tar.gz`, size: 100, container: g.container, time: g.time, full: g.full, name, legacy: g.legacy };
    if (!g.legacy && !(g.problem && g.foreign)) {
      const p = typeof g.parent === 'number' ? named[g.parent % named.length]! : undefined;
      const m: Manifest = {
        sbk: 'manifest',
        format: 1,
        tool: 'fuzz',
        created: '',
        container: g.foreign ? 'other' : g.container,
        time: g.time,
        full: g.full,
        name: g.foreign ? backupName('other', g.time, g.full) : name,
        // An incremental always has a parent object (checkManifest); it may name nothing useful.
        parent: g.full && g.parent === 'none' ? null : p ? { time: p.g.time, full: p.g.full, name: p.name } : g.parent === 'empty' ? ({} as Manifest['parent']) : { time: 0, full: true, name: 'nowhere_0_Full' },
        previous: null,
        volumes: g.volumes.map((v, i) => ({ name: v.name, mount: i === 0 ? '/' : `/${v.name}`, uuid: v.uuid, parentUuid: g.full ? null : v.parentUuid })),
        source: { containerDir: '', set: '', host: '' },
        meta: [],
        changelog: false,
      };
      a.manifest = m;
      if (g.foreign) {
        a.problem = `holds a backup of container other`;
        a.problemCode = ExitCode.corrupt;
      }
    }
    if (g.problem && !a.problem) {
      a.problem = 'unreadable: fuzz';
      a.problemCode = g.problemCode;
    }
    return a;
  });
  out.sort((a, b) => a.time - b.time || Number(b.full) - Number(a.full) || (a.file < b.file ? -1 : a.file > b.file ? 1 : 0));
  // Two files with one manifest name: the later ones are set aside, as scanStore does.
  const seen = new Set<string>();
  for (const a of out) {
    if (!a.manifest || a.problem) continue;
    if (seen.has(a.name)) {
      a.problem = 'holds the same backup';
      a.problemCode = ExitCode.conflict;
    } else seen.add(a.name);
  }
  return out;
}

describe('fuzz: planRestore on random stores', () => {
  it('a chain that really links, or a one-line SbkError with a code the store explains', () => {
    let planned = 0;
    let refused = 0;
    fc.assert(
      fc.property(fc.array(genArchive, { maxLength: 10 }), fc.constantFrom(...CONTAINERS), fc.option(fc.oneof(fc.integer({ min: 0, max: 35 }), fc.constant(999_999_999_999)), { nil: undefined }), (gens, container, at) => {
        // The store of one container, as scanStore gives it (it picks files by their parsed name);
        // other containers' backups appear only as foreign manifests.
        const all = store(gens.map((g) => ({ ...g, container })));
        const codes = new Set<number>([ExitCode.corrupt, ExitCode.notFound, ...all.map((a) => a.problemCode ?? ExitCode.corrupt)]);
        let plan;
        try {
          plan = planRestore(all, container, DIR, at);
        } catch (err) {
          if (!(err instanceof SbkError)) throw err;
          expect(codes.has(err.exitCode), `${err.exitCode}: ${err.message}`).toBe(true);
          expect(err.message).not.toMatch(/[\n\r]/);
          refused++;
          return;
        }
        planned++;
        const { target, chain } = plan;
        expect(all).toContain(target);
        expect(target.container).toBe(container);
        if (at !== undefined) expect(target.time).toBeLessThanOrEqual(at);
        // The newest usable backup at or before `at` is the one restored.
        const usable = all.filter((a) => a.container === container && !(a.manifest && a.problem) && (at === undefined || a.time <= at));
        expect(target).toBe(usable.at(-1));
        expect(chain.at(-1)).toBe(target);
        expect(new Set(chain).size).toBe(chain.length);
        for (const a of chain) {
          expect(all).toContain(a);
          expect(a.problem).toBeUndefined();
          expect(a.container).toBe(container);
        }
        if (target.legacy) {
          expect(chain.every((a) => a.legacy)).toBe(true);
          expect(chain[0]!.full).toBe(true);
          // A contiguous run of the store's legacy archives, in store order.
          const idx = chain.map((a) => all.indexOf(a));
          for (let i = 1; i < idx.length; i++) expect(idx[i]!).toBeGreaterThan(idx[i - 1]!);
        } else {
          expect(chain[0]!.manifest!.full).toBe(true);
          for (const a of chain.slice(1)) expect(a.manifest!.full).toBe(false);
          for (let i = 1; i < chain.length; i++) {
            const [p, c] = [chain[i - 1]!, chain[i]!];
            expect(linkProblem(c.manifest!, p.manifest!)).toBeUndefined();
            expect(c.manifest!.parent!.name).toBe(p.name);
            expect(p.time).toBeLessThan(c.time);
            for (const v of c.manifest!.volumes) if (v.parentUuid !== null) expect(p.manifest!.volumes.find((x) => x.name === v.name)?.uuid).toBe(v.parentUuid);
          }
        }
      }),
      { seed: 4242, numRuns: 3000 },
    );
    expect(planned).toBeGreaterThan(200);
    expect(refused).toBeGreaterThan(200);
  });

  it('listRows never throws, and agrees with chainTo for every archive', () => {
    fc.assert(
      fc.property(fc.array(genArchive, { maxLength: 10 }), (gens) => {
        const all = store(gens);
        const rows = listRows(all);
        expect(rows).toHaveLength(all.length);
        rows.forEach((r, i) => {
          const a = all[i]!;
          const c = chainTo(a, all);
          expect(r.name).toBe(a.name);
          expect(typeof r.date).toBe('string');
          expect(r.chain).toBe(a.problem ? 'unreadable' : c.problem ? 'broken' : 'complete');
          if (r.chain === 'complete') expect(r.length).toBe(c.archives.length);
          else expect(typeof r.problem).toBe('string');
        });
      }),
      { seed: 4243, numRuns: 1500 },
    );
  });
});

describe('fuzz: parseAtTime', () => {
  it('any text: unix seconds, or a usage error (2)', () => {
    const text = fc.oneof(
      fc.string({ maxLength: 30 }),
      fc.stringMatching(/^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,12})?)?(Z|[+-]\d{2}(:?\d{2})?)?)?$/),
      fc.stringMatching(/^\s*\d{1,14}\s*$/),
    );
    fc.assert(
      fc.property(text, (s) => {
        try {
          expect(Number.isSafeInteger(parseAtTime(s))).toBe(true);
        } catch (err) {
          if (!(err instanceof SbkError)) throw err;
          expect(err.exitCode).toBe(ExitCode.usage);
          expect(err.message).not.toMatch(/[\n\r]/);
        }
      }),
      { seed: 4244, numRuns: 3000 },
    );
  });

  it('reads back unix seconds and ISO 8601 date-times with a zone (years 1970 to 9999)', () => {
    const ms = fc.integer({ min: 0, max: Date.UTC(9999, 11, 31, 23, 59, 59) });
    fc.assert(
      fc.property(ms, fc.integer({ min: -14 * 60, max: 14 * 60 }), (t, offMin) => {
        const secs = Math.floor(t / 1000);
        expect(parseAtTime(String(secs))).toBe(secs);
        expect(parseAtTime(new Date(t).toISOString())).toBe(secs);
        // The same instant written in another zone.
        const local = new Date(t + offMin * 60_000).toISOString().slice(0, 19);
        const sign = offMin < 0 ? '-' : '+';
        const abs = Math.abs(offMin);
        const zone = `${sign}${String(Math.floor(abs / 60)).padStart(2, '0')}:${String(abs % 60).padStart(2, '0')}`;
        if (Number(local.slice(0, 4)) >= 1000) expect(parseAtTime(local + zone)).toBe(secs);
      }),
      { seed: 4245, numRuns: 2000 },
    );
  });

  // Parts of an ISO date-time, each in its valid range (day up to the month's length, zone up to ±14:00).
  const validParts = fc
    .record({
      y: fc.integer({ min: 1, max: 9999 }),
      mo: fc.integer({ min: 1, max: 12 }),
      d: fc.integer({ min: 1, max: 31 }),
      h: fc.integer({ min: 0, max: 23 }),
      mi: fc.integer({ min: 0, max: 59 }),
      s: fc.integer({ min: 0, max: 59 }),
      off: fc.integer({ min: -14 * 60, max: 14 * 60 }),
    })
    .map((p) => ({ ...p, d: Math.min(p.d, daysIn(p.y, p.mo)) }));
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  function daysIn(y: number, mo: number): number {
    const d = new Date(0);
    d.setUTCFullYear(y, mo, 0);
    return d.getUTCDate();
  }
  function utcOf(p: { y: number; mo: number; d: number; h: number; mi: number; s: number }): number {
    const d = new Date(0);
    d.setUTCFullYear(p.y, p.mo - 1, p.d);
    d.setUTCHours(p.h, p.mi, p.s, 0);
    return d.getTime(); // Date.UTC of the parts, without its 0–99 → 1900s rule
  }
  function iso(p: { y: number; mo: number; d: number; h: number; mi: number; s: number; off: number }, offH?: number, offM?: number): string {
    const a = Math.abs(p.off);
    const zone = `${p.off < 0 ? '-' : '+'}${pad(offH ?? Math.floor(a / 60))}:${pad(offM ?? a % 60)}`;
    return `${pad(p.y, 4)}-${pad(p.mo)}-${pad(p.d)}T${pad(p.h)}:${pad(p.mi)}:${pad(p.s)}${zone}`;
  }

  it('an ISO date-time built from valid parts reads as Date.UTC of those parts, less the offset', () => {
    fc.assert(
      fc.property(validParts, (p) => {
        expect(parseAtTime(iso(p))).toBe((utcOf(p) - p.off * 60_000) / 1000);
      }),
      { seed: 4246, numRuns: 3000 },
    );
  });

  it('any out-of-range part is refused with a usage error', () => {
    const part = fc.constantFrom('mo', 'd', 'h', 'mi', 's', 'offH', 'offM', 'offTotal');
    fc.assert(
      fc.property(validParts, part, fc.integer({ min: 0, max: 99 }), (p, which, n) => {
        const q = { ...p };
        let offH: number | undefined;
        let offM: number | undefined;
        if (which === 'mo') q.mo = n === 0 ? 0 : 13 + (n % 87);
        else if (which === 'd') q.d = n === 0 ? 0 : daysIn(p.y, p.mo) + 1 + (n % (99 - daysIn(p.y, p.mo)));
        else if (which === 'h') q.h = 24 + (n % 76);
        else if (which === 'mi') q.mi = 60 + (n % 40);
        else if (which === 's') q.s = 60 + (n % 40);
        else if (which === 'offH') offH = 15 + (n % 85);
        else if (which === 'offM') offM = 60 + (n % 40);
        else ((offH = 14), (offM = 1 + (n % 59)));
        const s = iso(q, offH, offM);
        try {
          parseAtTime(s);
        } catch (err) {
          expect(err, s).toBeInstanceOf(SbkError);
          expect((err as SbkError).exitCode).toBe(ExitCode.usage);
          return;
        }
        throw new Error(`accepted ${s}`);
      }),
      { seed: 4247, numRuns: 3000 },
    );
  });
});
