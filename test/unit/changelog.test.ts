// The changelog rules without a filesystem: the stream model on recorded fixture streams
// (--from-stream semantics), escaping (non-ASCII mount points too), ordering and rsync's itemized lines.
import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { changesFromModel } from '../../src/stages/changelog/changelog.js';
import { modelFromStream } from '../../src/stages/changelog/model.js';
import { parseRsyncLine, unescapeRsync } from '../../src/stages/changelog/rsync.js';
import {
  toLines,
  formatChangelog,
  escapePath,
  unescapePath,
  parseChangelogLine,
  containerPath,
  compareLines,
  type ChangelogLine,
} from '../../src/formats/changelog-lines.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';
import { Cmd, Attr } from '../../src/formats/sendstream/constants.js';
import { crc32cUpdate } from '../../src/formats/sendstream/crc32c.js';

const fixture = (name: string) => readFileSync(new URL(`../fixtures/sendstream/${name}`, import.meta.url));

async function fromStream(name: string, opts: { allChanges?: boolean; mount?: string } = {}) {
  const warnings: string[] = [];
  const model = await modelFromStream([fixture(name)]);
  const changes = await changesFromModel(model, undefined, { allChanges: opts.allChanges, warn: (m) => warnings.push(m) });
  return { text: formatChangelog(toLines(changes, opts.mount ?? '/')), warnings };
}

// What make-fixtures.sh changed between s1 and s2, as a stream alone can tell it: the renamed
// directory a/b is listed without its contents nor its trailing '/' (a warning says so), and
// the chmod of 'sp ace' and the xattr of a/f show only with --all-changes.
const INCR_EXPECTED = `modified /
modified /a/
deleted /a/b
modified /a/f
deleted /a/hl
modified /a/l
modified /d/
added /d/b2
modified /e/
modified /e/compressible
added /e/reflinked
modified /e/sparse
added /n/
added /n/q
deleted /nl\\nx
`;

describe('changes from a send stream alone (--from-stream)', () => {
  for (const name of ['v1-incr-nodata.stream', 'v1-incr.stream', 'v2-incr-nodata.stream']) {
    it(`${name}: the documented lines`, async () => {
      const r = await fromStream(name);
      expect(r.text).toBe(INCR_EXPECTED);
      expect(r.warnings).toHaveLength(1);
      expect(r.warnings[0]).toMatch(/1 renamed path\(s\) may be directories/);
    });
  }

  it('--all-changes adds the chmod-only file', async () => {
    const r = await fromStream('v1-incr-nodata.stream', { allChanges: true });
    expect(r.text).toBe(INCR_EXPECTED.replace('deleted /nl\\nx\n', 'deleted /nl\\nx\nmodified /sp ace\n'));
  });

  it('a full stream lists every path as added, the root included, under the mount point', async () => {
    for (const name of ['v1-full.stream', 'v1-full-nodata.stream', 'v2-full.stream', 'v2-full-compressed.stream']) {
      const r = await fromStream(name, { mount: '/var' });
      expect(r.warnings).toEqual([]);
      expect(r.text).toBe(
        [
          'added /var/',
          'added /var/a/',
          'added /var/a/b/',
          'added /var/a/b/g',
          'added /var/a/f',
          'added /var/a/ff',
          'added /var/a/hl',
          'added /var/a/l',
          'added /var/a/null',
          'added /var/bad\\377name',
          'added /var/d/',
          'added /var/e/',
          'added /var/e/compressible',
          'added /var/e/sparse',
          'added /var/nl\\nx',
          'added /var/sp ace',
          'added /var/ünï cødé',
        ].join('\n') + '\n',
      );
    }
  });

  it('a stream that does not fit its own tree is refused as corrupt, naming the command', async () => {
    // Valid CRCs, but the UNLINK names a path a full stream never created.
    const s = buildStream([
      [Cmd.SUBVOL, [[Attr.PATH, 'v'], [Attr.UUID, Buffer.alloc(16)], [Attr.CTRANSID, u64(1)]]],
      [Cmd.MKDIR, [[Attr.PATH, 'o257-5-0'], [Attr.INO, u64(257)]]],
      [Cmd.UNLINK, [[Attr.PATH, 'nope/x']]],
      [Cmd.END, []],
    ]);
    const err = await modelFromStream([s]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SbkError);
    expect((err as SbkError).exitCode).toBe(ExitCode.corrupt);
    expect((err as SbkError).message).toMatch(/no entry 'nope' \(unlink command at byte offset \d+\)/);
  });

  it('follows orphan names through renames, links and unlinks', async () => {
    // An incremental stream: a new file appears under an orphan name, is renamed into a
    // directory that is itself moved, gets a second name, and an old file is removed.
    const s = buildStream([
      [Cmd.SNAPSHOT, [[Attr.PATH, 'v'], [Attr.UUID, Buffer.alloc(16)], [Attr.CTRANSID, u64(2)], [Attr.CLONE_UUID, Buffer.alloc(16, 1)], [Attr.CLONE_CTRANSID, u64(1)]]],
      [Cmd.MKFILE, [[Attr.PATH, 'o300-9-0'], [Attr.INO, u64(300)]]],
      [Cmd.RENAME, [[Attr.PATH, 'o300-9-0'], [Attr.PATH_TO, 'dir/new']]],
      [Cmd.RENAME, [[Attr.PATH, 'dir'], [Attr.PATH_TO, 'moved']]],
      [Cmd.LINK, [[Attr.PATH, 'moved/second'], [Attr.PATH_LINK, 'moved/new']]],
      [Cmd.UNLINK, [[Attr.PATH, 'old']]],
      [Cmd.MKDIR, [[Attr.PATH, 'o301-9-0'], [Attr.INO, u64(301)]]],
      [Cmd.RMDIR, [[Attr.PATH, 'o301-9-0']]],
      [Cmd.END, []],
    ]);
    const model = await modelFromStream([s]);
    const changes = await changesFromModel(model, undefined, {});
    expect(formatChangelog(toLines(changes, '/'))).toBe(
      ['modified /', 'deleted /dir/', 'added /moved/', 'added /moved/new', 'added /moved/second', 'deleted /old'].join('\n') + '\n',
    );
  });
});

type Tlv = [number, string | Buffer];
const u64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};

/** A version 1 send stream with valid CRCs, for cases no real filesystem produces. */
function buildStream(cmds: Array<[number, Tlv[]]>): Buffer {
  const parts = [Buffer.from('btrfs-stream\0', 'latin1'), Buffer.from([1, 0, 0, 0])];
  for (const [type, tlvs] of cmds) {
    const body = Buffer.concat(
      tlvs.map(([t, v]) => {
        const val = typeof v === 'string' ? Buffer.from(v, 'latin1') : v;
        const h = Buffer.alloc(4);
        h.writeUInt16LE(t, 0);
        h.writeUInt16LE(val.length, 2);
        return Buffer.concat([h, val]);
      }),
    );
    const head = Buffer.alloc(10);
    head.writeUInt32LE(body.length, 0);
    head.writeUInt16LE(type, 4);
    const crc = crc32cUpdate(crc32cUpdate(0, head), body);
    head.writeUInt32LE(crc, 6);
    parts.push(head, body);
  }
  return Buffer.concat(parts);
}

describe('escaping', () => {
  const raw = (s: string) => Buffer.from(s, 'utf8').toString('latin1');

  it('keeps spaces, arrows, quotes and printable UTF-8; escapes what breaks a line', () => {
    expect(escapePath(raw('/etc/a -> b "q" \'s\''))).toBe('/etc/a -> b "q" \'s\'');
    expect(escapePath(raw('/home/ünïcødé ✓ 日本'))).toBe('/home/ünïcødé ✓ 日本');
    expect(escapePath(raw('/x\ny\tz\r\x07\x08\x0b\x0c\x1b'))).toBe('/x\\ny\\tz\\r\\a\\b\\v\\f\\e');
    expect(escapePath(raw('/back\\slash'))).toBe('/back\\\\slash');
    expect(escapePath(raw('/del\x7f\x01'))).toBe('/del\\177\\001');
    expect(escapePath('/bad\xffname\xc3')).toBe('/bad\\377name\\303');
    // C1 controls and the Unicode line/paragraph separators are escaped byte by byte.
    expect(escapePath(raw('/c1\u0085ls\u2028ps\u2029'))).toBe('/c1\\302\\205ls\\342\\200\\250ps\\342\\200\\251');
    // Overlong encodings and UTF-16 surrogates are not valid UTF-8.
    expect(escapePath('/\xc0\xaf\xed\xa0\x80')).toBe('/\\300\\257\\355\\240\\200');
  });

  it('round-trips any bytes, and the result is one line of valid text', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 40 }), (arr) => {
        const s = Buffer.from(arr).toString('latin1');
        const e = escapePath(s);
        expect(e).not.toMatch(/[\n\r\u2028\u2029]/);
        expect(Buffer.from(Buffer.from(e, 'utf8').toString('utf8'), 'utf8').toString('utf8')).toBe(e);
        expect(unescapePath(e)).toBe(s);
      }),
      { numRuns: 500 },
    );
  });

  it('parses its own lines back', () => {
    const line: ChangelogLine = { action: 'deleted', path: '/var/x\ny \\ \xff' };
    const text = formatChangelog([line]);
    expect(text).toBe('deleted /var/x\\ny \\\\ \\377\n');
    expect(parseChangelogLine(text.trimEnd())).toEqual(line);
    expect(parseChangelogLine('renamed /x')).toBeUndefined();
  });
});

describe('paths and order', () => {
  it('prefixes the mount point; directories end in /', () => {
    expect(containerPath('/', '', true)).toBe('/');
    expect(containerPath('/', 'etc/hostname', false)).toBe('/etc/hostname');
    expect(containerPath('/var', '', true)).toBe('/var/');
    expect(containerPath('/var/', 'cache/apt', true)).toBe('/var/cache/apt/');
  });

  it('sorts by path component (bytes), then deleted < modified < added', () => {
    const lines: ChangelogLine[] = [
      { action: 'added', path: '/var/cache' },
      { action: 'added', path: '/a-b' },
      { action: 'modified', path: '/a/' },
      { action: 'deleted', path: '/var/cache/' },
      { action: 'deleted', path: '/var/cache/x' },
      { action: 'modified', path: '/' },
      { action: 'added', path: '/a/z' },
      { action: 'added', path: '/B' },
    ];
    expect(formatChangelog(lines)).toBe(
      ['modified /', 'added /B', 'modified /a/', 'added /a/z', 'added /a-b', 'deleted /var/cache/', 'added /var/cache', 'deleted /var/cache/x'].join('\n') +
        '\n',
    );
    expect(compareLines(lines[0]!, lines[0]!)).toBe(0);
  });
});

describe('rsync itemized lines', () => {
  it('parses flags and names, keeping spaces, arrows and trailing spaces', () => {
    expect(parseRsyncLine('>f.st...... etc/a -> b ')).toEqual({ flags: '>f.st......', rel: 'etc/a -> b ', dir: false });
    expect(parseRsyncLine('cd+++++++++ var/cache/')).toEqual({ flags: 'cd+++++++++', rel: 'var/cache', dir: true });
    expect(parseRsyncLine('*deleting   var/cache/')).toEqual({ flags: '*deleting  ', rel: 'var/cache', dir: true });
    expect(parseRsyncLine('*deleting   debian')).toEqual({ flags: '*deleting  ', rel: 'debian', dir: false });
    expect(parseRsyncLine('.d..t...... ./')).toEqual({ flags: '.d..t......', rel: '', dir: true });
    expect(parseRsyncLine('cLc.t...... etc/tool-link')?.dir).toBe(false);
  });

  it('decodes rsync escapes (LC_ALL=C) to raw bytes', () => {
    expect(unescapeRsync('nl\\#012x')).toBe('nl\nx');
    expect(unescapeRsync('back\\#134#012slash')).toBe('back\\#012slash');
    expect(unescapeRsync('x\\y')).toBe('x\\y');
    expect(unescapeRsync('\\#303\\#274')).toBe('\xc3\xbc');
    expect(parseRsyncLine('>f+++++++++ bad\\#377name')?.rel).toBe('bad\xffname');
  });

  it('refuses short and foreign lines instead of crashing on them', () => {
    for (const l of ['', 'x', '>f+++', 'sending incremental file list', 'created directory /x', '>f+++++++++x']) {
      expect(parseRsyncLine(l)).toBeUndefined();
    }
  });
});

// The mount point of a volume is an ordinary string (from the LXC config or --mount): a
// non-ASCII one must come out as its UTF-8 characters, not escaped as if each UTF-16 code unit
// were a byte.
describe('changelog mount points', () => {
  it('a non-ASCII mount point is written as UTF-8 text, and reads back', () => {
    const rel = Buffer.from('café', 'utf8').toString('latin1'); // paths in a volume: raw bytes
    for (const mount of ['/données', '/数据', '/srv/😀']) {
      const text = formatChangelog(toLines([{ action: 'added', rel, dir: false }, { action: 'modified', rel: '', dir: true }], mount));
      expect(text).toBe(`modified ${mount}/\nadded ${mount}/café\n`);
      const back = parseChangelogLine(text.split('\n')[1]!)!;
      expect(Buffer.from(back.path, 'latin1').toString('utf8')).toBe(`${mount}/café`);
    }
  });
});
