// Property-based fuzzing of names and lines (hostile names too): container,
// volume, archive and set-directory names (src/core/layout.ts), and the changelog's path escaping
// and line format (src/formats/changelog-lines.ts). Any string: a clean usage error (exit 2) or a valid
// name, never another exception; every valid name round-trips through the file names made from
// it; any bytes round-trip through the escaping, which always gives one line of valid text.
// Fixed seeds.
import path from 'node:path';
import fc from 'fast-check';
import { describe, it, expect } from 'vitest';
import {
  checkContainerName,
  isValidContainerName,
  isValidVolumeName,
  archiveFileName,
  parseArchiveName,
  setDirName,
  parseSetDirName,
  partialSetName,
  changelogFileName,
  backupName,
  formatTime,
} from '../../src/core/layout.js';
import { escapePath, unescapePath, parseChangelogLine, formatChangelog, sortLines, compareLines, type ChangelogLine } from '../../src/formats/changelog-lines.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';

// ---------------------------------------------------------------------------------------------
// Strings worth trying as names

const VALID_RE = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$/;
const validContainer = fc.stringMatching(VALID_RE).filter((c) => !c.includes('..') && c !== 'backups');
// Names that look like archive names themselves: `_`, digits and `_Full` inside the container name.
const trickyContainer = fc
  .array(fc.oneof(fc.constantFrom('_', '_Full', '_0', '_1477297700', '.tar.gz', '-', '+', '.'), fc.stringMatching(/^[A-Za-z0-9]{1,4}$/)), { minLength: 1, maxLength: 6 })
  .map((p) => 'c' + p.join(''))
  .filter((c) => c.length <= 100 && isValidContainerName(c));
const anyName = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.string({ unit: 'binary', maxLength: 30 }),
  fc.string({ unit: 'grapheme', maxLength: 10 }),
  validContainer,
  fc.tuple(validContainer, fc.constantFrom('/', '..', ' ', '\t', '\n', '\0', '\u00a0', '\u2028', 'ü', '٣', '\x1b[31m', ':', '*', '\\'), validContainer).map(([a, b, c]) => a + b + c),
  fc.constantFrom('', '.', '..', 'backups', 'Backups', '-rf', '_c', '.c1', 'c'.repeat(100), 'c'.repeat(101), 'meta', 'rootfs', '__proto__', 'constructor'),
);
const timeArb = fc.oneof(fc.integer({ min: 0, max: 999_999_999_999 }), fc.constantFrom(0, 1, 9, 10, 1477297700, 999_999_999_999));

describe('fuzz: container and volume names', () => {
  it('checkContainerName: the name itself, or a one-line usage error (2); isValidContainerName agrees', () => {
    fc.assert(
      fc.property(anyName, (name) => {
        let ok: boolean;
        try {
          expect(checkContainerName(name, 'container name')).toBe(name);
          ok = true;
        } catch (err) {
          if (!(err instanceof SbkError)) throw err;
          expect(err.exitCode).toBe(ExitCode.usage);
          expect(err.message).not.toMatch(/[\x00-\x1f\x7f]/);
          ok = false;
        }
        expect(isValidContainerName(name)).toBe(ok);
        // What a valid name is, stated independently: safe as one path component and in `<c>_<time>`.
        if (ok) {
          expect(name).toMatch(VALID_RE);
          expect(name).not.toContain('..');
          expect(name).not.toBe('backups');
          expect(path.basename(name)).toBe(name);
        }
      }),
      { seed: 4242, numRuns: 2000 },
    );
  });

  it('checkContainerName on any value at all: a usage error unless it is a valid name', () => {
    fc.assert(
      fc.property(fc.anything(), (v) => {
        try {
          checkContainerName(v as string);
          expect(typeof v).toBe('string');
        } catch (err) {
          if (!(err instanceof SbkError)) throw err;
          expect(err.exitCode).toBe(ExitCode.usage);
        }
      }),
      { seed: 4243, numRuns: 500 },
    );
  });

  it('isValidVolumeName: never throws; a valid one is one safe path component, not meta', () => {
    fc.assert(
      fc.property(anyName, (name) => {
        if (!isValidVolumeName(name)) return;
        expect(name).toMatch(/^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$/);
        expect(['', '.', '..', 'meta']).not.toContain(name);
        expect(name).not.toContain('..');
        expect(path.basename(name)).toBe(name);
      }),
      { seed: 4244, numRuns: 2000 },
    );
  });
});

describe('fuzz: archive and set-directory names', () => {
  it('archiveFileName → parseArchiveName gives back container, time and kind, for every valid container name', () => {
    fc.assert(
      fc.property(fc.oneof(validContainer, trickyContainer), timeArb, fc.boolean(), fc.constantFrom('', '/var/backups/', './', 'rel/dir/'), (container, time, full, dir) => {
        const file = archiveFileName(container, time, full);
        expect(file).toBe(`${backupName(container, time, full)}.tar.gz`);
        expect(parseArchiveName(dir + file)).toEqual({ container, time, full, suffix: '.tar.gz' });
        const zst = archiveFileName(container, time, full, '.tar.zst');
        expect(parseArchiveName(dir + zst)).toEqual({ container, time, full, suffix: '.tar.zst' });
        // The changelog sidecar is never taken for an archive.
        expect(parseArchiveName(changelogFileName(container, time))).toBeUndefined();
      }),
      { seed: 4245, numRuns: 2000 },
    );
  });

  it('two different backups never share a file name (web vs web_2)', () => {
    fc.assert(
      fc.property(fc.oneof(validContainer, trickyContainer), fc.oneof(validContainer, trickyContainer), timeArb, timeArb, fc.boolean(), fc.boolean(), (c1, c2, t1, t2, f1, f2) => {
        if (c1 === c2 && t1 === t2 && f1 === f2) return;
        expect(archiveFileName(c1, t1, f1)).not.toBe(archiveFileName(c2, t2, f2));
      }),
      { seed: 4246, numRuns: 1000 },
    );
  });

  it('parseArchiveName on any string: undefined, or a name that formats back to the same file name', () => {
    const fileish = fc.oneof(
      anyName,
      fc.tuple(anyName, fc.constantFrom('_', '__', '_0', '_01', '_1477297700', '_1477297700000', '_-1'), fc.constantFrom('', '_Full', '_full', '_Full_Full'), fc.constantFrom('.tar.gz', '.tar.zst', '.tar', '.tar.gz.tmp', '.zst', '')).map((p) => p.join('')),
      fc.tuple(fc.oneof(validContainer, trickyContainer), fc.stringMatching(/^_\d{1,14}(_Full)?\.tar\.(gz|zst)$/)).map(([c, s]) => c + s),
    );
    fc.assert(
      fc.property(fileish, (name) => {
        const p = parseArchiveName(name);
        if (p === undefined) return;
        expect(isValidContainerName(p.container)).toBe(true);
        expect(Number.isSafeInteger(p.time) && p.time >= 0).toBe(true);
        expect(archiveFileName(p.container, p.time, p.full, p.suffix)).toBe(path.basename(name));
      }),
      { seed: 4247, numRuns: 3000 },
    );
  });

  it('setDirName → parseSetDirName round-trips; any string parses to undefined or formats back to itself', () => {
    fc.assert(
      fc.property(timeArb, fc.boolean(), fc.oneof(anyName, fc.stringMatching(/^\.?\d{1,14}(_Full)?(\.partial)?$/)), (time, full, s) => {
        expect(parseSetDirName(setDirName(time, full))).toEqual({ time, full });
        expect(parseSetDirName(partialSetName(time, full))).toBeUndefined();
        const p = parseSetDirName(s);
        if (p !== undefined) expect(setDirName(p.time, p.full)).toBe(s);
      }),
      { seed: 4248, numRuns: 2000 },
    );
  });

  it('formatTime never throws on a time a record or manifest may carry (any safe integer >= 0)', () => {
    fc.assert(
      fc.property(fc.oneof(timeArb, fc.maxSafeNat()), (t) => {
        const s = formatTime(t);
        expect(typeof s).toBe('string');
        expect(s).not.toBe('');
        if (t <= 999_999_999_999) expect(new Date(s).getTime()).toBe(t * 1000);
      }),
      { seed: 4249, numRuns: 1000 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Changelog escaping

const utf8 = (s: string) => Buffer.from(s, 'utf8').toString('latin1');
/** Raw path bytes (a latin1 string): random bytes, UTF-8 of any code point, and the hard cases. */
const rawBytes = fc
  .array(
    fc.oneof(
      fc.uint8Array({ minLength: 1, maxLength: 4 }).map((a) => Buffer.from(a).toString('latin1')),
      fc.string({ unit: 'grapheme', minLength: 1, maxLength: 3 }).map(utf8),
      fc.integer({ min: 0, max: 0x10ffff }).map((cp) => (cp >= 0xd800 && cp <= 0xdfff ? '\xed\xa0\x80' : utf8(String.fromCodePoint(cp)))),
      fc.constantFrom(
        '\\', '\\\\', '\\n', '\\101', '\\377', '\\x41', '\\#101', '/', ' ', '\n', '\r', '\t', '\x7f', '\x00', '\x1b',
        utf8('\u0085'), utf8('\u2028'), utf8('\u2029'), utf8('\ufeff'), utf8('\u{10ffff}'),
        '\xc0\xaf', '\xe0\x80\xaf', '\xed\xa0\x80', '\xf4\x90\x80\x80', '\xf8\x88\x80\x80\x80', '\xc3', '\xe2\x82', '\xff', '\x80',
      ),
    ),
    { maxLength: 12 },
  )
  .map((parts) => parts.join(''));

describe('fuzz: changelog path escaping', () => {
  it('unescapePath(escapePath(raw)) is raw for any bytes; the escaped text is one line of valid, printable text', () => {
    fc.assert(
      fc.property(rawBytes, (raw) => {
        const e = escapePath(raw);
        expect(unescapePath(e)).toBe(raw);
        // No control characters (C0, DEL, C1), no line or paragraph separators.
        expect(e).not.toMatch(/[\x00-\x1f\x7f-\x9f\u2028\u2029]/);
        // Well-formed UTF-16: it survives a UTF-8 round trip.
        expect(Buffer.from(e, 'utf8').toString('utf8')).toBe(e);
      }),
      { seed: 4250, numRuns: 3000 },
    );
  });

  it('different paths never escape alike', () => {
    fc.assert(
      fc.property(rawBytes, rawBytes, (a, b) => {
        if (a !== b) expect(escapePath(a)).not.toBe(escapePath(b));
      }),
      { seed: 4251, numRuns: 1000 },
    );
  });

  it('parseChangelogLine reads back any line formatChangelog writes; any text parses or is undefined, never throws', () => {
    const actionArb = fc.constantFrom<ChangelogLine['action']>('added', 'modified', 'deleted');
    fc.assert(
      fc.property(actionArb, rawBytes, fc.boolean(), fc.string({ unit: 'binary', maxLength: 40 }), (action, raw, dir, junk) => {
        const p = '/' + raw + (dir ? '/' : '');
        const line: ChangelogLine = { action, path: p };
        const text = formatChangelog([line]);
        expect(text.endsWith('\n')).toBe(true);
        expect(text.slice(0, -1)).not.toContain('\n');
        expect(parseChangelogLine(text.slice(0, -1))).toEqual(line);
        for (const t of [junk, `${action} ${junk}`, `${action} /${junk}`]) {
          const r = parseChangelogLine(t);
          if (r !== undefined) {
            expect(['added', 'modified', 'deleted']).toContain(r.action);
            expect(r.path.startsWith('/')).toBe(true);
          }
          expect(() => unescapePath(t)).not.toThrow();
        }
      }),
      { seed: 4252, numRuns: 2000 },
    );
  });

  it('a whole changelog: sorted, one line per entry, parsed back to the same lines, formatting is stable', () => {
    const lineArb = fc.record({
      action: fc.constantFrom<ChangelogLine['action']>('added', 'modified', 'deleted'),
      path: fc.tuple(fc.array(fc.oneof(fc.constantFrom('a', 'b', 'a b', '\xff', 'é'), rawBytes.filter((s) => s !== '' && !s.includes('/'))), { maxLength: 3 }), fc.boolean()).map(
        ([parts, dir]) => '/' + parts.join('/') + (dir && parts.length ? '/' : ''),
      ),
    });
    fc.assert(
      fc.property(fc.array(lineArb, { maxLength: 12 }), (lines) => {
        const text = formatChangelog(lines);
        const back = text === '' ? [] : text.slice(0, -1).split('\n').map((l) => parseChangelogLine(l));
        expect(back).toHaveLength(lines.length);
        expect(back).not.toContain(undefined);
        const key = (l: ChangelogLine) => `${l.action} ${l.path}`;
        expect(back.map((l) => key(l!)).sort()).toEqual(lines.map(key).sort());
        for (let i = 1; i < back.length; i++) expect(compareLines(back[i - 1]!, back[i]!)).toBeLessThanOrEqual(0);
        expect(formatChangelog(back as ChangelogLine[])).toBe(text);
        expect(sortLines(back as ChangelogLine[]).map(key)).toEqual(back.map((l) => key(l!)));
      }),
      { seed: 4253, numRuns: 800 },
    );
  });

  it('compareLines is a consistent order (antisymmetric, transitive)', () => {
    const lineArb = fc.record({
      action: fc.constantFrom<ChangelogLine['action']>('added', 'modified', 'deleted'),
      path: fc.array(fc.constantFrom('a', 'b', 'a.b', 'a b', '\xff', 'B', ''), { maxLength: 3 }).map((p) => '/' + p.join('/')),
    });
    fc.assert(
      fc.property(lineArb, lineArb, lineArb, (a, b, c) => {
        const s = (x: number) => Math.sign(x);
        expect(s(compareLines(a, b))).toBe(-s(compareLines(b, a)) || 0);
        if (compareLines(a, b) <= 0 && compareLines(b, c) <= 0) expect(compareLines(a, c)).toBeLessThanOrEqual(0);
      }),
      { seed: 4254, numRuns: 2000 },
    );
  });
});

describe('regressions found by fuzzing', () => {
  it('formatTime of a time Date cannot show (a damaged manifest) is the number, not a RangeError', () => {
    expect(formatTime(8_640_000_000_001)).toBe('8640000000001 (unix seconds)');
    expect(formatTime(Number.MAX_SAFE_INTEGER)).toBe(`${Number.MAX_SAFE_INTEGER} (unix seconds)`);
    expect(formatTime(1477297700)).toBe('2016-10-24T08:28:20Z');
  });
});
