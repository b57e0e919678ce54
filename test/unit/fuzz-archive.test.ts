// Property-based fuzzing of the archive reader (hostile archives). The
// flip/truncation property is in archive.test.ts; these are structural mutations made with
// tar-stream's pack: entries reordered, duplicated, removed, renamed (hostile names), retyped
// (links, devices), bodies replaced, random JSON in the manifest and trailer, pax records, and
// raw header fields (huge sizes, type flags, names) rewritten with a valid header checksum.
// Whatever comes in, readArchives yields a well-formed archive or fails with an SbkError of exit
// code 3 or 4; never another exception, never a hang. Without a matching trailer, an accepted
// archive holds exactly the files that were written. Valid archives of random content
// round-trip. Fixed seeds.
import { createHash } from 'node:crypto';
import { gzipSync } from 'node:zlib';
import { Readable } from 'node:stream';
import fc from 'fast-check';
import tar from 'tar-stream';
import { describe, it, expect, beforeAll } from 'vitest';
import {
  ArchiveWriter,
  readArchives,
  manifestFromRecord,
  isSafeMetaPath,
  type Manifest,
  type Trailer,
  type ReadOptions,
} from '../../src/formats/archive/archive.js';
import { RECORD_FORMAT, type BackupRecord } from '../../src/formats/record.js';
import { backupName, isValidContainerName, isValidVolumeName } from '../../src/core/layout.js';
import { openArchiveStream } from '../../src/formats/archive/open.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';
import { chunked, editJson, guarded, settler, type JsonEdit, type Outcome } from '../helpers/fuzz.js';

const BK = '/var/snap/subutai/common/lxc/backups';
const MTIME = new Date('2016-10-20T10:00:00Z');
const DELTA_RE = /^([^/]+)\.delta(?:\.(\d{6}))?$/;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const settle = settler([ExitCode.badInput, ExitCode.corrupt]);

async function* iter(parts: Buffer[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield p;
}

async function collect(s: AsyncIterable<unknown>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of s) out.push(Buffer.from(c as Buffer));
  return Buffer.concat(out);
}

// ---------------------------------------------------------------------------------------------
// Writing valid archives of random content

const containerArb = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.+-]{0,20}$/).filter((c) => isValidContainerName(c));
// Volume names are file names; some of them are also the names of Object.prototype's members.
const volumeArb = fc.oneof(
  { weight: 4, arbitrary: fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,12}$/).filter((v) => isValidVolumeName(v)) },
  { weight: 1, arbitrary: fc.constantFrom('rootfs', 'home', '__proto__', 'constructor', 'toString', 'hasOwnProperty', 'x.delta', 'v.delta.000001', '_') },
);
const segmentArb = fc.oneof(
  fc.stringMatching(/^[a-z0-9._-]{1,8}$/),
  fc.string({ unit: 'grapheme', minLength: 1, maxLength: 6 }),
);
const metaRelArb = fc.array(segmentArb, { minLength: 1, maxLength: 3 }).map((s) => s.join('/')).filter(isSafeMetaPath);

interface Spec {
  container: string;
  time: number;
  full: boolean;
  volumes: { name: string; delta: Buffer }[];
  meta: { rel: string; dir: boolean; data: Buffer; mode: number }[];
  changelog?: Buffer;
  partSize: number;
}

const bytesArb = (max: number) => fc.integer({ min: 0, max }).chain((n) => fc.uint8Array({ minLength: n, maxLength: n }).map((a) => Buffer.from(a)));

const specArb: fc.Arbitrary<Spec> = fc.record({
  container: containerArb,
  time: fc.integer({ min: 1, max: 99_999_999_999 }),
  full: fc.boolean(),
  volumes: fc.uniqueArray(fc.record({ name: volumeArb, delta: bytesArb(2500) }), { minLength: 1, maxLength: 3, selector: (v) => v.name }),
  meta: fc.uniqueArray(fc.record({ rel: metaRelArb, dir: fc.boolean(), data: bytesArb(300), mode: fc.constantFrom(0o644, 0o600, 0o755, 0o700) }), {
    maxLength: 4,
    selector: (m) => m.rel,
  }),
  changelog: fc.option(bytesArb(400), { nil: undefined }),
  partSize: fc.integer({ min: 64, max: 3000 }),
});

function recordOf(s: Spec): BackupRecord {
  const name = backupName(s.container, s.time, s.full);
  const set = `${BK}/${s.container}/${s.time}${s.full ? '_Full' : ''}`;
  const parent = s.full ? null : { time: s.time - 1, full: true, name: backupName(s.container, s.time - 1, true), set: `${BK}/${s.container}/${s.time - 1}_Full` };
  return {
    sbk: 'backup',
    format: RECORD_FORMAT,
    container: s.container,
    time: s.time,
    full: s.full,
    name,
    set,
    containerDir: `/var/snap/subutai/common/lxc/${s.container}`,
    parent,
    previous: parent,
    volumes: s.volumes.map((v, i) => ({
      name: v.name,
      mount: i === 0 ? '/' : `/${v.name}`,
      source: `/var/snap/subutai/common/lxc/${s.container}/${v.name}`,
      snapshot: `${set}/${v.name}`,
      uuid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
      parentUuid: s.full ? null : `00000000-0000-4000-9000-${String(i).padStart(12, '0')}`,
    })),
  };
}

async function writeArchive(pack: tar.Pack, s: Spec): Promise<{ manifest: Manifest; trailer: Trailer }> {
  const manifest = manifestFromRecord(recordOf(s), {
    tool: 'sbk fuzz',
    host: 'host1',
    meta: s.meta.map((m) => m.rel),
    changelog: s.changelog !== undefined,
    now: new Date('2016-10-24T08:28:21Z'),
  });
  const w = new ArchiveWriter(pack, manifest, s.partSize);
  await w.start();
  for (const m of s.meta) {
    if (m.dir) await w.addMetaDirectory(m.rel, m.mode, MTIME);
    else await w.addMetaFile(m.rel, m.data, m.mode, MTIME);
  }
  if (s.changelog) await w.addChangelog(iter(chunked(s.changelog, [100])), s.changelog.length);
  for (const v of s.volumes) await w.addDelta(v.name, iter(chunked(v.delta, [257, 1000, 3])));
  return { manifest, trailer: await w.finish() };
}

async function build(specs: Spec[]): Promise<{ buf: Buffer; written: { manifest: Manifest; trailer: Trailer }[] }> {
  const pack = tar.pack();
  const out = collect(pack);
  const written = [];
  for (const s of specs) written.push(await writeArchive(pack, s));
  pack.finalize();
  return { buf: await out, written };
}

// ---------------------------------------------------------------------------------------------
// Reading, and what an accepted stream must look like

interface Got {
  archive: number;
  role: string;
  name: string;
  type: string;
  volume?: string;
  part?: number;
  body?: Buffer;
  manifest: Manifest;
  trailer?: Trailer;
}

type Consume = 'all' | 'none' | 'first';

async function readAll(buf: Buffer, sizes: number[], consume: Consume, opts: ReadOptions = {}): Promise<Got[]> {
  const out: Got[] = [];
  for await (const e of readArchives(Readable.from(chunked(buf, sizes), { objectMode: false }), opts)) {
    const g: Got = { archive: e.archive, role: e.role, name: e.name, type: e.header.type ?? '?', volume: e.volume, part: e.part, manifest: e.manifest, trailer: e.trailer };
    if (consume === 'all') g.body = await collect(e.body);
    else if (consume === 'first') for await (const _ of e.body) break;
    out.push(g);
  }
  return out;
}

/** An independent statement of the format's rules, checked on everything the reader accepts. */
function checkAccepted(got: Got[], legacy: boolean) {
  const byArchive = new Map<number, Got[]>();
  for (const g of got) byArchive.set(g.archive, [...(byArchive.get(g.archive) ?? []), g]);
  expect([...byArchive.keys()]).toEqual([...byArchive.keys()].map((_, i) => i));
  for (const [a, entries] of byArchive) {
    const m = entries[0]!.manifest;
    const isLegacy = m.format === 0;
    if (isLegacy) expect(legacy && a === 0).toBe(true);
    else {
      expect(isValidContainerName(m.container)).toBe(true);
      expect(m.name).toBe(backupName(m.container, m.time, m.full));
      expect(entries[0]!.role).toBe('manifest');
      expect(entries[0]!.name).toBe('manifest.json');
      expect(entries.at(-1)!.role).toBe('trailer');
      expect(entries.filter((e) => e.role === 'trailer')).toHaveLength(1);
      // Every listed volume has its delta, and only listed volumes have one.
      const vols = new Set(entries.filter((e) => e.role === 'delta').map((e) => e.volume!));
      expect([...vols].sort()).toEqual(m.volumes.map((v) => v.name).sort());
    }
    const seen = new Set<string>();
    for (const e of entries) {
      expect(e.manifest).toBe(m);
      const key = e.name.replace(/\/$/, '');
      expect(seen.has(key), `${e.name} twice`).toBe(false);
      seen.add(key);
      // Nothing a restore could write outside its directory, and only files and meta directories.
      expect(e.name.startsWith('/')).toBe(false);
      expect(e.name.split('/')).not.toContain('..');
      expect(e.name).not.toContain('\0');
      expect(e.type === 'file' || (e.type === 'directory' && e.role === 'meta')).toBe(true);
      switch (e.role) {
        case 'meta': {
          const rel = e.name.replace(/^meta\/?/, '').replace(/\/$/, '');
          expect(rel === '' || isSafeMetaPath(rel), e.name).toBe(true);
          expect(e.name === 'meta' || e.name.startsWith('meta/')).toBe(true);
          break;
        }
        case 'delta': {
          const d = DELTA_RE.exec(e.name)!;
          expect(d, e.name).not.toBeNull();
          expect(d[1]).toBe(e.volume);
          expect(isValidVolumeName(e.volume!)).toBe(true);
          break;
        }
        case 'changelog':
          expect(e.name).toBe('changelog.txt');
          break;
        case 'manifest':
          expect(e).toBe(entries[0]);
          break;
        case 'trailer':
          expect(e.name).toBe('trailer.json');
          break;
        default:
          throw new Error(`unknown role ${e.role}`);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Taking archives apart and putting them back together with tar-stream

interface Entry {
  header: Partial<tar.Header> & { name: string };
  body: Buffer;
}

async function extractAll(buf: Buffer): Promise<Entry[]> {
  const ex = tar.extract();
  Readable.from([buf]).pipe(ex);
  const out: Entry[] = [];
  for await (const e of ex) {
    const h = e.header;
    out.push({
      header: { name: h.name, type: h.type ?? 'file', mode: h.mode, mtime: h.mtime, uid: h.uid, gid: h.gid, uname: h.uname, gname: h.gname, linkname: h.linkname ?? undefined },
      body: await collect(e),
    });
  }
  return out;
}

const VOID_TYPES = new Set(['directory', 'symlink', 'link', 'character-device', 'block-device', 'fifo']);

async function packAll(entries: Entry[], opts: { end?: boolean } = {}): Promise<Buffer> {
  const pack = tar.pack();
  const out = collect(pack);
  for (const e of entries) {
    const header = { ...e.header };
    await new Promise<void>((resolve, reject) => {
      if (VOID_TYPES.has(header.type ?? 'file')) pack.entry({ ...header, size: 0 }, (err) => (err ? reject(err) : resolve()));
      else pack.entry(header, e.body, (err) => (err ? reject(err) : resolve()));
    });
  }
  if (opts.end === false) pack.push(null);
  else pack.finalize();
  return out;
}

/**
 * Recomputes the trailer of every archive in the list from the entries before it, as the writer
 * would: the checksums then agree and only the reader's structural rules stand in the way.
 */
function resign(entries: Entry[]): Entry[] {
  const out: Entry[] = [];
  let segment: Entry[] = [];
  for (const e of entries) {
    if (e.header.name !== 'trailer.json') {
      segment.push(e);
      out.push(e);
      continue;
    }
    let name: unknown;
    let format: unknown;
    try {
      ({ name, format } = (JSON.parse(segment[0]?.body.toString('utf8') ?? '') as { name?: unknown; format?: unknown }) ?? {});
    } catch {
      name = undefined;
    }
    const t = { sbk: 'trailer', format, name, entries: [] as unknown[], volumes: Object.create(null) as Record<string, unknown> };
    const vh = new Map<string, { h: ReturnType<typeof createHash>; size: number; parts: number }>();
    for (const s of segment) {
      if ((s.header.type ?? 'file') !== 'file') continue;
      t.entries.push({ name: s.header.name, size: s.body.length, sha256: sha(s.body) });
      const d = DELTA_RE.exec(s.header.name);
      if (d) {
        const v = vh.get(d[1]!) ?? { h: createHash('sha256'), size: 0, parts: 0 };
        // Format 1: a whole delta's sha256 is of its bytes; from format 2, of its parts' digests.
        v.h.update(format === 1 ? s.body : Buffer.from(sha(s.body), 'hex'));
        v.size += s.body.length;
        v.parts++;
        vh.set(d[1]!, v);
      }
    }
    for (const [v, s] of vh) t.volumes[v] = { size: s.size, sha256: s.h.digest('hex'), parts: s.parts };
    out.push({ header: e.header, body: Buffer.from(JSON.stringify(t, null, 2) + '\n') });
    segment = [];
  }
  return out;
}

// --- mutations ---


const hostileName = fc.oneof(
  fc.constantFrom(
    '../x', '/etc/passwd', 'meta/../../etc/passwd', 'meta/./a', 'meta//a', 'meta/', 'meta', 'meta/a\\b', 'meta/..', './manifest.json',
    'manifest.json', 'trailer.json', 'changelog.txt', 'rootfs.delta', 'rootfs.delta.000000', 'rootfs.delta.000001', 'rootfs.delta.1',
    '../rootfs.delta', 'home.delta', 'meta.delta', '..delta', '.delta', '__proto__.delta', 'evil.sh', 'meta/' + 'a'.repeat(200), 'x/'.repeat(60) + 'y',
  ),
  fc.string({ maxLength: 20 }),
  fc.string({ unit: 'grapheme', maxLength: 12 }),
  fc.tuple(fc.constantFrom('meta/', '', 'rootfs.', '../'), fc.string({ maxLength: 10 })).map(([a, b]) => a + b),
);
const jsonValueArb = fc.oneof(
  fc.jsonValue({ maxDepth: 3 }),
  fc.constantFrom(null, true, 0, -1, 1.5, 2 ** 53, 1e300, '', '..', '../x', 'meta', 'rootfs', '/', [], {}, 'manifest', 'trailer', 'backup'),
);
const jsonEditArb: fc.Arbitrary<JsonEdit> = fc.record({
  op: fc.constantFrom('set' as const, 'delete' as const, 'add' as const),
  pick: fc.nat(),
  value: jsonValueArb,
  key: fc.oneof(fc.constantFrom('sbk', 'format', 'name', 'volumes', 'entries', 'changelog', 'parent', '__proto__', 'constructor'), fc.string({ maxLength: 6 })),
});

type Mutation =
  | { op: 'swap' | 'move' | 'dup'; i: number; j: number }
  | { op: 'remove'; i: number }
  | { op: 'rename'; i: number; name: string }
  | { op: 'retype'; i: number; type: tar.Header['type']; linkname: string }
  | { op: 'body'; i: number; body: Buffer }
  | { op: 'json'; which: 'manifest.json' | 'trailer.json'; k: number; edits: JsonEdit[] }
  | { op: 'jsonRandom'; which: 'manifest.json' | 'trailer.json'; k: number; text: string }
  | { op: 'meta'; i: number; mode: number; mtime: number; uid: number; uname: string }
  | { op: 'pax'; i: number; pax: Record<string, string> };

const idx = fc.nat(200);
const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ op: fc.constantFrom('swap' as const, 'move' as const, 'dup' as const), i: idx, j: idx }),
  fc.record({ op: fc.constant('remove' as const), i: idx }),
  fc.record({ op: fc.constant('rename' as const), i: idx, name: hostileName }),
  fc.record({
    op: fc.constant('retype' as const),
    i: idx,
    type: fc.constantFrom<tar.Header['type']>('symlink', 'link', 'directory', 'character-device', 'block-device', 'fifo', 'contiguous-file', 'file'),
    linkname: fc.constantFrom('/etc/shadow', '../../x', 'manifest.json', 'meta/config'),
  }),
  fc.record({ op: fc.constant('body' as const), i: idx, body: bytesArb(600) }),
  fc.record({ op: fc.constant('json' as const), which: fc.constantFrom('manifest.json' as const, 'trailer.json' as const), k: idx, edits: fc.array(jsonEditArb, { minLength: 1, maxLength: 3 }) }),
  fc.record({
    op: fc.constant('jsonRandom' as const),
    which: fc.constantFrom('manifest.json' as const, 'trailer.json' as const),
    k: idx,
    text: fc.oneof(fc.json({ maxDepth: 3 }), fc.string({ maxLength: 30 }), fc.constantFrom('', '{', 'null', '[]', '{}', '{"sbk":"manifest","format":1}', '{"sbk":"trailer","entries":[],"volumes":{}}')),
  }),
  fc.record({ op: fc.constant('meta' as const), i: idx, mode: fc.nat(0o7777), mtime: fc.nat(2 ** 33 - 1), uid: fc.nat(65535), uname: fc.string({ maxLength: 10 }) }),
  fc.record({
    op: fc.constant('pax' as const),
    i: idx,
    pax: fc.dictionary(
      fc.constantFrom('path', 'size', 'linkpath', 'comment', 'mtime', 'SCHILY.xattr.user.x'),
      fc.oneof(hostileName, fc.constantFrom('NaN', '-1', '0', '1', '1e3', '99999999999999999999', '17179869184', '1.5')),
      { maxKeys: 2 },
    ),
  }),
);

function mutate(entries0: Entry[], ms: Mutation[]): Entry[] {
  const entries = entries0.map((e) => ({ header: { ...e.header }, body: e.body }));
  for (const m of ms) {
    if (entries.length === 0) break;
    if (m.op === 'json' || m.op === 'jsonRandom') {
      const targets = entries.filter((e) => e.header.name === m.which);
      if (!targets.length) continue;
      const e = targets[m.k % targets.length]!;
      if (m.op === 'jsonRandom') e.body = Buffer.from(m.text);
      else {
        let v: unknown;
        try {
          v = JSON.parse(e.body.toString('utf8'));
        } catch {
          continue;
        }
        for (const edit of m.edits) v = editJson(v, edit);
        e.body = Buffer.from(String(JSON.stringify(v, null, 2)) + '\n');
      }
      continue;
    }
    const i = m.i % entries.length;
    const e = entries[i]!;
    switch (m.op) {
      case 'swap': {
        const j = m.j % entries.length;
        [entries[i], entries[j]] = [entries[j]!, e];
        break;
      }
      case 'move':
        entries.splice(i, 1);
        entries.splice(m.j % (entries.length + 1), 0, e);
        break;
      case 'dup':
        entries.splice(m.j % (entries.length + 1), 0, { header: { ...e.header }, body: e.body });
        break;
      case 'remove':
        entries.splice(i, 1);
        break;
      case 'rename':
        e.header.name = m.name;
        break;
      case 'retype':
        e.header.type = m.type;
        if (m.type === 'symlink' || m.type === 'link') e.header.linkname = m.linkname;
        if (VOID_TYPES.has(m.type ?? 'file')) e.body = Buffer.alloc(0);
        break;
      case 'body':
        e.body = m.body;
        break;
      case 'meta':
        e.header.mode = m.mode;
        e.header.mtime = new Date(m.mtime * 1000);
        e.header.uid = m.uid;
        e.header.uname = m.uname;
        break;
      case 'pax':
        e.header.pax = m.pax;
        break;
    }
  }
  return entries;
}

/** The files (name, content) of each archive as written: what an accepted stream must hold. */
function filesOf(entries: { name: string; type: string; body?: Buffer; archive: number }[]): string[] {
  return entries.filter((e) => e.type === 'file' && e.name !== 'trailer.json').map((e) => `${e.archive}:${e.name}:${e.body ? sha(e.body) : '-'}`);
}

/** Reads, checks the outcome is clean, and on success that the stream is well formed. */
async function readChecked(buf: Buffer, sizes: number[], consume: Consume, legacy: boolean): Promise<Outcome<Got[]>> {
  const r = await settle('readArchives', () => readAll(buf, sizes, consume, { legacy, source: 'fuzz.tar' }));
  if (r.ok) checkAccepted(r.value, legacy);
  else expect(r.err.message).toMatch(/^fuzz\.tar[: ]/);
  return r;
}

/** Offsets of every 512-byte header (pax headers included), from the sizes they declare. */
function headerOffsets(buf: Buffer): number[] {
  const out: number[] = [];
  for (let at = 0; at + 512 <= buf.length; ) {
    if (buf.subarray(at, at + 512).every((x) => x === 0)) break;
    out.push(at);
    const size = parseInt(buf.toString('latin1', at + 124, at + 136).replace(/\0.*$/, '').trim() || '0', 8);
    at += 512 + Math.ceil(size / 512) * 512;
  }
  return out;
}
function fixChecksum(h: Buffer) {
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const x of h) sum += x;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
}

// ---------------------------------------------------------------------------------------------

const sizesArb = fc.oneof(
  fc.constant<number[]>([1 << 20]),
  fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 4 }),
  fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 4 }),
);
const consumeArb = fc.constantFrom<Consume>('all', 'all', 'none', 'first');

describe('fuzz: valid archives of random content', () => {
  it('round-trip: every entry, body, manifest and trailer as written, whatever the chunking', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(specArb, { minLength: 1, maxLength: 2 }), sizesArb, fc.boolean(), async (specs, sizes, legacy) => {
        const { buf, written } = await build(specs);
        const got = await guarded(readAll(buf, sizes, 'all', { legacy }), 'readArchives');
        checkAccepted(got, legacy);
        // Per archive: the manifest, meta entries, changelog, each volume's whole stream (its parts
        // joined), the trailer.
        const want: string[] = [];
        specs.forEach((s, a) => {
          want.push(`${a}:manifest:manifest.json:`);
          for (const m of s.meta) want.push(`${a}:meta:meta/${m.rel}${m.dir ? '/' : ''}:${m.dir ? '' : sha(m.data)}`);
          if (s.changelog) want.push(`${a}:changelog:changelog.txt:${sha(s.changelog)}`);
          for (const v of s.volumes) want.push(`${a}:delta:${v.name}:${sha(v.delta)}`);
          want.push(`${a}:trailer:trailer.json:`);
        });
        const have: { key: string; bufs: Buffer[] }[] = [];
        for (const g of got) {
          const key = g.role === 'delta' ? `${g.archive}:delta:${g.volume}` : `${g.archive}:${g.role}:${g.name}`;
          if (g.role === 'delta' && g.part !== undefined && g.part > 0 && have.at(-1)?.key === key) have.at(-1)!.bufs.push(g.body!);
          else have.push({ key, bufs: g.type === 'file' && g.role !== 'manifest' && g.role !== 'trailer' ? [g.body!] : [] });
        }
        expect(have.map((h) => `${h.key}:${h.bufs.length ? sha(Buffer.concat(h.bufs)) : ''}`)).toEqual(want);
        // Parts: full ones of partSize bytes but the last, numbered from 000000; a stream shorter
        // than one part is a lone <volume>.delta.
        const parts = new Map<string, Got[]>();
        for (const g of got.filter((x) => x.role === 'delta')) parts.set(`${g.archive}:${g.volume}`, [...(parts.get(`${g.archive}:${g.volume}`) ?? []), g]);
        for (const ps of parts.values()) {
          const size = specs[ps[0]!.archive]!.partSize;
          if (ps[0]!.part === undefined) {
            expect(ps).toHaveLength(1);
            expect(ps[0]!.body!.length).toBeLessThan(size);
          } else {
            expect(ps.map((p) => p.part)).toEqual(ps.map((_, i) => i));
            for (const p of ps.slice(0, -1)) expect(p.body!.length).toBe(size);
            expect(ps.at(-1)!.body!.length).toBeGreaterThan(0);
            expect(ps.at(-1)!.body!.length).toBeLessThanOrEqual(size);
          }
        }
        written.forEach((w, a) => {
          const m = got.find((g) => g.archive === a && g.role === 'manifest')!;
          expect(m.manifest).toEqual(w.manifest);
          expect(got.find((g) => g.archive === a && g.role === 'trailer')!.trailer).toEqual(JSON.parse(JSON.stringify(w.trailer)));
        });
      }),
      { seed: 4242, numRuns: 150, endOnFailure: true },
    );
  });
});

describe('fuzz: archives mutated entry by entry (tar-stream pack)', () => {
  let bases: { buf: Buffer; entries: Entry[]; files: string[] }[];

  beforeAll(async () => {
    const specs: Spec[][] = [
      [
        {
          container: 'c1',
          time: 1477297700,
          full: true,
          volumes: [
            { name: 'rootfs', delta: Buffer.alloc(2500, 1) },
            { name: 'home', delta: Buffer.alloc(0) },
            { name: 'var', delta: Buffer.from('var delta') },
          ],
          meta: [
            { rel: 'config', dir: false, data: Buffer.from('lxc.rootfs = /x/c1/rootfs\n'), mode: 0o644 },
            { rel: 'ssh', dir: true, data: Buffer.alloc(0), mode: 0o700 },
            { rel: 'ssh/id_rsa.pub', dir: false, data: Buffer.from('ssh-rsa AAAA c1\n'), mode: 0o600 },
          ],
          changelog: Buffer.from('added /etc/x\n'.repeat(20)),
          partSize: 1000,
        },
      ],
      [
        { container: 'web_2', time: 1477297700, full: true, volumes: [{ name: 'rootfs', delta: Buffer.alloc(700, 2) }], meta: [], partSize: 500 },
        { container: 'web_2', time: 1477297760, full: false, volumes: [{ name: 'rootfs', delta: Buffer.alloc(300, 3) }, { name: 'opt', delta: Buffer.alloc(1200, 4) }], meta: [{ rel: 'fstab', dir: false, data: Buffer.alloc(0), mode: 0o644 }], partSize: 500 },
      ],
    ];
    bases = [];
    for (const s of specs) {
      const { buf } = await build(s);
      const entries = await extractAll(buf);
      const got = await readAll(buf, [1 << 20], 'all');
      bases.push({ buf, entries, files: filesOf(got) });
      // The packer puts the archive back together as it was.
      expect((await packAll(entries)).equals(buf)).toBe(true);
    }
  });

  it('an SbkError (3 or 4), or exactly the files that were written', async () => {
    let refused = 0;
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.array(mutationArb, { minLength: 1, maxLength: 3 }), sizesArb, consumeArb, fc.boolean(), async (b, ms, sizes, consume, legacy) => {
        const base = bases[b % bases.length]!;
        const buf = await packAll(mutate(base.entries, ms));
        const r = await readChecked(buf, sizes, consume, legacy);
        if (!r.ok) {
          refused++;
          return;
        }
        if (r.value.some((g) => g.manifest.format === 0)) return; // a legacy archive carries no checksums
        if (consume === 'all') expect(filesOf(r.value)).toEqual(base.files);
        else expect(filesOf(r.value).map((f) => f.replace(/:[^:]*$/, ''))).toEqual(base.files.map((f) => f.replace(/:[^:]*$/, '')));
      }),
      { seed: 4243, numRuns: 350, endOnFailure: true },
    );
    expect(refused).toBeGreaterThan(250);
  });

  it('with trailers recomputed to match: an SbkError (3 or 4), or a well-formed archive', async () => {
    let accepted = 0;
    let refused = 0;
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.array(mutationArb, { minLength: 1, maxLength: 3 }), sizesArb, consumeArb, fc.boolean(), async (b, ms, sizes, consume, legacy) => {
        const base = bases[b % bases.length]!;
        const buf = await packAll(resign(mutate(base.entries, ms)));
        const r = await readChecked(buf, sizes, consume, legacy);
        if (r.ok) accepted++;
        else refused++;
      }),
      { seed: 4244, numRuns: 350, endOnFailure: true },
    );
    expect(refused).toBeGreaterThan(150);
    expect(accepted).toBeGreaterThan(10);
  });

  it('random JSON for the manifest (trailer recomputed) or the trailer: refused unless it is a valid one', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.nat(),
        fc.constantFrom('manifest.json', 'trailer.json'),
        fc.oneof(fc.json({ maxDepth: 4 }).map((t) => ({ text: t })), fc.array(jsonEditArb, { minLength: 1, maxLength: 5 }).map((edits) => ({ edits }))),
        sizesArb,
        async (b, which, change, sizes) => {
          const base = bases[b % bases.length]!;
          const m: Mutation = 'text' in change ? { op: 'jsonRandom', which, k: b, text: change.text } : { op: 'json', which, k: b, edits: change.edits };
          const mutated = mutate(base.entries, [m]);
          const buf = await packAll(which === 'manifest.json' ? resign(mutated) : mutated);
          await readChecked(buf, sizes, 'all', false);
        },
      ),
      { seed: 4245, numRuns: 300, endOnFailure: true },
    );
  });

  it('raw header fields rewritten (huge sizes, type flags, names, magic), checksum fixed or not', async () => {
    type Edit = { field: 'size' | 'size256' | 'type' | 'name' | 'prefix' | 'magic' | 'mode' | 'cksum'; k: number; n: number; text: string };
    const editArb: fc.Arbitrary<Edit> = fc.record({
      field: fc.constantFrom('size', 'size', 'size256', 'type', 'name', 'prefix', 'magic', 'mode', 'cksum'),
      k: fc.nat(100),
      n: fc.oneof(fc.nat(4096), fc.nat(2 ** 33 - 1), fc.maxSafeNat(), fc.constantFrom(64 * 1024 * 1024 + 1, 16 * 1024 * 1024 + 1, 8 ** 11 - 1)),
      text: fc.oneof(hostileName, fc.constantFrom('0', '1', '2', '3', '4', '5', '6', '7', 'x', 'g', 'L', 'K', 'V', 'S', '\0', '\xff')),
    });
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.array(editArb, { minLength: 1, maxLength: 2 }), fc.boolean(), sizesArb, consumeArb, async (b, edits, fix, sizes, consume) => {
        const base = bases[b % bases.length]!;
        const buf = Buffer.from(base.buf);
        const offs = headerOffsets(buf);
        for (const e of edits) {
          const h = buf.subarray(offs[e.k % offs.length]!, offs[e.k % offs.length]! + 512);
          switch (e.field) {
            case 'size':
              h.write(e.n.toString(8).slice(-11).padStart(11, '0') + '\0', 124, 'latin1');
              break;
            case 'size256': {
              h[124] = 0x80;
              let s = e.n;
              for (let i = 135; i > 124; i--) {
                h[i] = s % 256;
                s = Math.floor(s / 256);
              }
              break;
            }
            case 'type':
              h.write(e.text.slice(0, 1) || '\0', 156, 'latin1');
              break;
            case 'name':
              h.fill(0, 0, 100);
              h.write(e.text, 0, 100, 'utf8');
              break;
            case 'prefix':
              h.fill(0, 345, 500);
              h.write(e.text, 345, 155, 'utf8');
              break;
            case 'magic':
              h.write(e.text.padEnd(6, '\0').slice(0, 6), 257, 'latin1');
              break;
            case 'mode':
              h.write(e.text.padEnd(8, ' ').slice(0, 8), 100, 'latin1');
              break;
            case 'cksum':
              h.write(e.n.toString(8).slice(-6).padStart(6, '0') + '\0 ', 148, 'latin1');
              break;
          }
          if (fix && e.field !== 'cksum') fixChecksum(h);
        }
        const r = await readChecked(buf, sizes, consume, false);
        if (r.ok && consume === 'all') expect(filesOf(r.value)).toEqual(base.files);
      }),
      { seed: 4246, numRuns: 300, endOnFailure: true },
    );
  });

  it('cut at an entry boundary, or after a header declaring a huge size: refused unless whole', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.nat(), fc.nat({ max: 2 ** 40 }), fc.boolean(), sizesArb, async (b, k, size, end, sizes) => {
        const base = bases[b % bases.length]!;
        const keep = base.entries.slice(0, 1 + (k % base.entries.length));
        const whole = await packAll(keep, { end });
        const r = await readChecked(whole, sizes, 'all', false);
        if (keep.at(-1)!.header.name !== 'trailer.json') expect(r.ok).toBe(false);
        // The last header now declares more than its body, and the stream ends there.
        const cut = Buffer.from(await packAll(keep, { end: false }));
        const last = headerOffsets(cut).at(-1)!;
        const actual = keep.at(-1)!.body.length;
        const h = cut.subarray(last, last + 512);
        const declared = Math.max(size, actual + 1);
        if (declared < 8 ** 11) h.write(declared.toString(8).padStart(11, '0') + '\0', 124, 'latin1');
        else {
          h[124] = 0x80;
          let x = declared;
          for (let i = 135; i > 124; i--) {
            h[i] = x % 256;
            x = Math.floor(x / 256);
          }
        }
        fixChecksum(h);
        const r2 = await readChecked(cut.subarray(0, last + 512 + actual), sizes, 'all', false);
        expect(r2.ok).toBe(false);
      }),
      { seed: 4247, numRuns: 150, endOnFailure: true },
    );
  });
});

describe('fuzz: compressed archives (.tar.gz, as stored) damaged byte by byte', () => {
  it('read through openArchiveStream: an SbkError (3 or 4), or exactly the files that were written', async () => {
    const { buf } = await build([
      { container: 'c1', time: 1477297700, full: true, volumes: [{ name: 'rootfs', delta: Buffer.alloc(3000, 7) }, { name: 'home', delta: Buffer.from('home') }], meta: [{ rel: 'config', dir: false, data: Buffer.from('lxc.rootfs = /x/c1/rootfs\n'), mode: 0o644 }], changelog: Buffer.from('added /x\n'), partSize: 1000 },
      { container: 'c1', time: 1477297760, full: false, volumes: [{ name: 'rootfs', delta: Buffer.alloc(500, 8) }], meta: [], partSize: 1000 },
    ]);
    const files = filesOf(await readAll(buf, [1 << 20], 'all'));
    // Two gzip members, as `cat a.tar.gz b.tar.gz` makes them.
    const half = headerOffsets(buf).find((o) => o > 0 && buf.toString('latin1', o, o + 13) === 'manifest.json')!;
    const gz = Buffer.concat([gzipSync(buf.subarray(0, half)), gzipSync(buf.subarray(half))]);
    const mutation = fc.record({ op: fc.constantFrom('flip', 'cut', 'insert'), at: fc.nat(), mask: fc.integer({ min: 1, max: 255 }) });
    await fc.assert(
      fc.asyncProperty(fc.array(mutation, { minLength: 1, maxLength: 2 }), sizesArb, consumeArb, async (ms, sizes, consume) => {
        let bad = Buffer.from(gz);
        for (const m of ms) {
          const at = m.at % bad.length;
          if (m.op === 'flip') bad[at] ^= m.mask;
          else if (m.op === 'cut') bad = bad.subarray(0, at);
          else bad = Buffer.concat([bad.subarray(0, at), Buffer.from([m.mask]), bad.subarray(at)]);
        }
        const r = await settle('openArchiveStream + readArchives', async () => {
          const tarStream = await openArchiveStream(Readable.from(chunked(bad, sizes), { objectMode: false }), 'fuzz.tar.gz');
          const out: Got[] = [];
          try {
            for await (const e of readArchives(tarStream, { source: 'fuzz.tar.gz' })) {
              const g: Got = { archive: e.archive, role: e.role, name: e.name, type: e.header.type ?? '?', volume: e.volume, part: e.part, manifest: e.manifest, trailer: e.trailer };
              if (consume === 'all') g.body = await collect(e.body);
              else if (consume === 'first') for await (const _ of e.body) break;
              out.push(g);
            }
          } finally {
            tarStream.destroy();
          }
          return out;
        });
        if (!r.ok) return;
        checkAccepted(r.value, false);
        // gzip's own CRC does not cover a cut at a member boundary: the trailer does.
        if (consume === 'all') expect(filesOf(r.value)).toEqual(files.slice(0, filesOf(r.value).length));
        expect(r.value.at(-1)!.role).toBe('trailer');
      }),
      { seed: 4248, numRuns: 300, endOnFailure: true },
    );
  });
});

describe('regressions found by fuzzing', () => {
  it('a meta directory entry that declares data is refused, not read forever', async () => {
    const { buf } = await build([
      { container: 'c1', time: 1477297700, full: true, volumes: [{ name: 'rootfs', delta: Buffer.from('x') }], meta: [{ rel: 'ssh', dir: true, data: Buffer.alloc(0), mode: 0o700 }], partSize: 1000 },
    ]);
    const bad = Buffer.from(buf);
    const dir = headerOffsets(bad).find((o) => bad.toString('latin1', o, o + 9) === 'meta/ssh/')!;
    const h = bad.subarray(dir, dir + 512);
    h.write('00000000005\0', 124, 'latin1');
    fixChecksum(h);
    for (const consume of ['all', 'none'] as const) {
      const r = await settle('readArchives', () => readAll(bad, [1 << 20], consume));
      expect(r.ok).toBe(false);
      expect((r as { err: SbkError }).err.exitCode).toBe(ExitCode.corrupt);
      expect((r as { err: SbkError }).err.message).toBe("input: directory entry 'meta/ssh/' declares 5 bytes of data");
    }
  });

  it('volumes named like Object.prototype members (__proto__, constructor) round-trip', async () => {
    const { buf, written } = await build([
      {
        container: 'c1',
        time: 1477297700,
        full: true,
        volumes: [
          { name: '__proto__', delta: Buffer.from('proto') },
          { name: 'constructor', delta: Buffer.from('ctor') },
        ],
        meta: [],
        partSize: 1000,
      },
    ]);
    expect(Object.keys(written[0]!.trailer.volumes)).toEqual(['__proto__', 'constructor']);
    const got = await readAll(buf, [1 << 20], 'all');
    expect(got.map((g) => g.name)).toEqual(['manifest.json', '__proto__.delta', 'constructor.delta', 'trailer.json']);
    // A trailer that leaves such a volume out is refused as such, not read as Object.prototype.
    const entries = await extractAll(buf);
    const t = entries.at(-1)!;
    const json = JSON.parse(t.body.toString()) as Trailer;
    delete (json.volumes as Record<string, unknown>)['constructor'];
    t.body = Buffer.from(JSON.stringify(json));
    const packed = await packAll(entries);
    const r = await settle('readArchives', () => readAll(packed, [1 << 20], 'all'));
    expect((r as { err: SbkError }).err.message).toMatch(/volume constructor is not in the trailer/);
  });
});
