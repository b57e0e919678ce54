// The archive writer and reader: round trips, and every way an archive can be broken, cut or
// hostile. Every failure must be an SbkError (exit 4 corrupt, or 3 not an sbk stream), never
// another exception and never a hang. Fixture archives made from real btrfs send streams are in
// test/fixtures/archives (see its README).
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { createGunzip, gunzipSync, gzipSync } from 'node:zlib';
import fc from 'fast-check';
import tar from 'tar-stream';
import { describe, it, expect } from 'vitest';
import {
  ArchiveWriter,
  readArchives,
  manifestFromRecord,
  formatRootTime,
  deltaPartName,
  isSafeMetaPath,
  ARCHIVE_FORMAT,
  DEFAULT_PART_SIZE,
  type Manifest,
  type Trailer,
  type ArchiveEntry,
  type ReadOptions,
} from '../../src/formats/archive/archive.js';
import { RECORD_FORMAT, type BackupRecord } from '../../src/formats/record.js';
import { META_FILE_MAX, META_TOTAL_MAX } from '../../src/formats/archive/meta.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';

const FIXTURES = fileURLToPath(new URL('../fixtures/archives/', import.meta.url));
const T0 = 1477297700;
const BK = '/var/snap/subutai/common/lxc/backups';
const VOLS = ['rootfs', 'home', 'opt', 'var'];

// ---------------------------------------------------------------------------------------------
// Making archives

function record(o: { container?: string; time?: number; full?: boolean; volumes?: string[]; changelog?: boolean } = {}): BackupRecord {
  const container = o.container ?? 'c1';
  const time = o.time ?? T0;
  const full = o.full ?? true;
  const name = `${container}_${time}${full ? '_Full' : ''}`;
  const set = `${BK}/${container}/${time}${full ? '_Full' : ''}`;
  const parent = full ? null : { time: T0 - 100, full: true, name: `${container}_${T0 - 100}_Full`, set: `${BK}/${container}/${T0 - 100}_Full` };
  return {
    sbk: 'backup',
    format: RECORD_FORMAT,
    container,
    time,
    full,
    name,
    set,
    containerDir: `/var/snap/subutai/common/lxc/${container}`,
    parent,
    previous: parent,
    volumes: (o.volumes ?? VOLS).map((v, i) => ({
      name: v,
      mount: v === 'rootfs' ? '/' : `/${v}`,
      source: `/var/snap/subutai/common/lxc/${container}/${v}`,
      snapshot: `${set}/${v}`,
      uuid: `00000000-0000-4000-8000-${String(time).padStart(10, '0')}${i}${i}`,
      parentUuid: full ? null : `00000000-0000-4000-8000-${String(T0 - 100).padStart(10, '0')}${i}${i}`,
    })),
    changelog: o.changelog ? `${set}/.sbk-changelog.txt` : undefined,
  };
}

interface MetaItem {
  rel: string;
  type: 'file' | 'directory';
  data?: Buffer;
  mode?: number;
}

const DEFAULT_META: MetaItem[] = [
  { rel: 'config', type: 'file', data: Buffer.from('lxc.rootfs = /var/snap/subutai/common/lxc/c1/rootfs\nlxc.utsname = c1\n'), mode: 0o644 },
  { rel: 'fstab', type: 'file', data: Buffer.alloc(0), mode: 0o644 },
  { rel: 'ssh', type: 'directory', mode: 0o700 },
  { rel: 'ssh/id_rsa.pub', type: 'file', data: Buffer.from('ssh-rsa AAAA c1\n'), mode: 0o600 },
];

/** Deterministic, incompressible bytes. */
function bytes(n: number, seed = 1): Buffer {
  const b = Buffer.alloc(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** Splits a buffer into chunks of the given sizes (cycled), as a send stream arrives. */
function chunks(buf: Buffer, sizes: number[] = [buf.length || 1]): Buffer[] {
  const out: Buffer[] = [];
  let i = 0;
  let k = 0;
  while (i < buf.length) {
    const n = Math.max(1, sizes[k++ % sizes.length]!);
    out.push(buf.subarray(i, i + n));
    i += n;
  }
  return out;
}

async function* iter(parts: Buffer[]): AsyncGenerator<Buffer> {
  for (const p of parts) yield p;
}

async function collectStream(s: AsyncIterable<unknown>): Promise<Buffer> {
  const out: Buffer[] = [];
  for await (const c of s) out.push(Buffer.from(c as Buffer));
  return Buffer.concat(out);
}

interface BuildOptions {
  record?: BackupRecord;
  meta?: MetaItem[];
  changelog?: Buffer;
  /** Volume → its send stream (as chunks, or one buffer). Default: small deltas for each volume. */
  deltas?: Record<string, Buffer | Buffer[]>;
  partSize?: number;
  /** Leave the trailer out (an archive cut at an entry boundary). */
  noTrailer?: boolean;
}

const MTIME = new Date('2016-10-20T10:00:00Z');

async function writeInto(pack: tar.Pack, o: BuildOptions = {}): Promise<{ manifest: Manifest; trailer?: Trailer }> {
  const r = o.record ?? record({ changelog: o.changelog !== undefined });
  const meta = o.meta ?? DEFAULT_META;
  const manifest = manifestFromRecord(r, {
    tool: 'sbk test',
    host: 'host1',
    meta: meta.map((m) => m.rel),
    changelog: o.changelog !== undefined,
    now: new Date('2016-10-24T08:28:21Z'),
  });
  const w = new ArchiveWriter(pack, manifest, o.partSize ?? 1000);
  await w.start();
  for (const m of meta) {
    if (m.type === 'directory') await w.addMetaDirectory(m.rel, m.mode ?? 0o755, MTIME);
    else await w.addMetaFile(m.rel, m.data ?? Buffer.alloc(0), m.mode ?? 0o644, MTIME);
  }
  if (o.changelog) await w.addChangelog(iter(chunks(o.changelog, [100])), o.changelog.length);
  const deltas = o.deltas ?? Object.fromEntries(r.volumes.map((v, i) => [v.name, bytes(300 + i * 700, i + 1)]));
  for (const v of r.volumes) {
    const d = deltas[v.name];
    if (d === undefined) continue;
    await w.addDelta(v.name, iter(Array.isArray(d) ? d : chunks(d, [257, 1000, 3])));
  }
  if (o.noTrailer) return { manifest };
  return { manifest, trailer: await w.finish() };
}

/** One or more archives in one tar stream, as sbk-send writes them. */
async function build(...archives: BuildOptions[]): Promise<Buffer> {
  if (archives.length === 0) archives = [{}];
  const pack = tar.pack();
  const out = collectStream(pack);
  for (const a of archives) await writeInto(pack, a);
  pack.finalize();
  return out;
}

// A hand-made tar, for what tar-stream's pack will not write (bad names, odd types, lies).

interface RawEntry {
  name: string;
  body?: Buffer | string;
  /** Typeflag character: '0' file, '1' hard link, '2' symlink, '3' char dev, '4' block dev, '5' dir, '6' fifo. */
  type?: string;
  linkname?: string;
  /** Declared size when it differs from the body's. */
  size?: number;
  mode?: number;
}

function octal(n: number, width: number): string {
  return n.toString(8).padStart(width - 1, '0') + '\0';
}

function rawHeader(e: RawEntry, bodyLength: number): Buffer {
  const h = Buffer.alloc(512);
  h.write(e.name, 0, 100, 'utf8');
  h.write(octal(e.mode ?? 0o644, 8), 100, 'latin1');
  h.write(octal(0, 8), 108, 'latin1');
  h.write(octal(0, 8), 116, 'latin1');
  const size = e.size ?? bodyLength;
  if (size < 8 ** 11) h.write(octal(size, 12), 124, 'latin1');
  else {
    // base-256, as GNU tar writes sizes of 8 GiB and more
    h[124] = 0x80;
    let s = size;
    for (let i = 135; i > 124; i--) {
      h[i] = s % 256;
      s = Math.floor(s / 256);
    }
  }
  h.write(octal(T0, 12), 136, 'latin1');
  h.write(e.type ?? '0', 156, 'latin1');
  if (e.linkname) h.write(e.linkname, 157, 100, 'utf8');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  h.write('root', 265, 'latin1');
  h.write('root', 297, 'latin1');
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return h;
}

function rawTar(entries: RawEntry[], opts: { end?: boolean } = {}): Buffer {
  const parts: Buffer[] = [];
  for (const e of entries) {
    const body = typeof e.body === 'string' ? Buffer.from(e.body) : (e.body ?? Buffer.alloc(0));
    parts.push(rawHeader(e, body.length), body, Buffer.alloc((512 - (body.length % 512)) % 512));
  }
  if (opts.end !== false) parts.push(Buffer.alloc(1024));
  return Buffer.concat(parts);
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const DELTA = /^([^/]+)\.delta(?:\.(\d{6}))?$/;

function manifestOf(o: { record?: BackupRecord; meta?: string[]; changelog?: boolean } = {}): Manifest {
  return manifestFromRecord(o.record ?? record(), {
    tool: 'sbk test',
    host: 'host1',
    meta: o.meta ?? [],
    changelog: o.changelog ?? false,
    now: new Date('2016-10-24T08:28:21Z'),
  });
}

const manifestEntry = (m: Manifest | Record<string, unknown>): RawEntry => ({ name: 'manifest.json', body: JSON.stringify(m, null, 2) + '\n' });

/** The trailer that matches the given entries (the manifest first): hand-made archives that are whole. */
function trailerFor(entries: RawEntry[], tweak?: (t: Trailer) => void): RawEntry {
  const m = JSON.parse(String(entries[0]!.body)) as Manifest;
  const t: Trailer = { sbk: 'trailer', format: m.format, name: m.name, entries: [], volumes: {} };
  const vh = new Map<string, { h: ReturnType<typeof createHash>; size: number; parts: number }>();
  for (const e of entries) {
    if ((e.type ?? '0') !== '0') continue;
    const body = typeof e.body === 'string' ? Buffer.from(e.body) : (e.body ?? Buffer.alloc(0));
    t.entries.push({ name: e.name, size: body.length, sha256: sha(body) });
    const d = DELTA.exec(e.name);
    if (d) {
      const s = vh.get(d[1]!) ?? { h: createHash('sha256'), size: 0, parts: 0 };
      // Format 1: a whole delta's sha256 is of its bytes; from format 2, of its parts' digests.
      s.h.update(m.format === 1 ? body : Buffer.from(sha(body), 'hex'));
      s.size += body.length;
      s.parts++;
      vh.set(d[1]!, s);
    }
  }
  for (const [v, s] of vh) t.volumes[v] = { size: s.size, sha256: s.h.digest('hex'), parts: s.parts };
  tweak?.(t);
  return { name: 'trailer.json', body: JSON.stringify(t, null, 2) + '\n' };
}

/** A whole hand-made archive: manifest (1 volume `rootfs` unless given), the entries, a matching trailer. */
function handmade(middle: RawEntry[], o: { manifest?: Manifest; tweak?: (t: Trailer) => void; end?: boolean } = {}): Buffer {
  const m = o.manifest ?? manifestOf({ record: record({ volumes: ['rootfs'] }) });
  const entries = [manifestEntry(m), ...middle];
  return rawTar([...entries, trailerFor(entries, o.tweak)], { end: o.end });
}

// ---------------------------------------------------------------------------------------------
// Reading archives

interface Got {
  archive: number;
  role: ArchiveEntry['role'];
  name: string;
  type: string;
  volume?: string;
  part?: number;
  body: Buffer;
  trailer?: Trailer;
  manifest: Manifest;
  mode?: number;
  mtime?: Date;
}

function input(buf: Buffer, chunkSize = 4096): Readable {
  return Readable.from(chunks(buf, [chunkSize]), { objectMode: false });
}

async function readAll(buf: Buffer, opts: ReadOptions = {}, chunkSize?: number): Promise<Got[]> {
  const out: Got[] = [];
  for await (const e of readArchives(input(buf, chunkSize), opts)) {
    out.push({
      archive: e.archive,
      role: e.role,
      name: e.name,
      type: e.header.type ?? '?',
      volume: e.volume,
      part: e.part,
      body: await collectStream(e.body),
      trailer: e.trailer,
      manifest: e.manifest,
      mode: e.header.mode,
      mtime: e.header.mtime,
    });
  }
  return out;
}

/** Fails the test if the promise takes longer than `ms` (a hang). */
async function within<T>(p: Promise<T>, ms = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`hang: no result within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/** The SbkError reading `buf` fails with (the test fails if it succeeds or fails otherwise). */
async function readError(buf: Buffer, opts: ReadOptions = {}, chunkSize?: number): Promise<SbkError> {
  const err = await within(readAll(buf, opts, chunkSize)).then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof SbkError)) throw new Error(`expected an SbkError, got ${err === undefined ? 'success' : String((err as Error)?.stack ?? err)}`);
  expect(err.message).not.toContain('\n');
  return err;
}

async function corruptError(buf: Buffer, message?: RegExp, opts?: ReadOptions): Promise<SbkError> {
  const err = await readError(buf, opts);
  expect(err.exitCode, err.message).toBe(ExitCode.corrupt);
  if (message) expect(err.message).toMatch(message);
  return err;
}

async function badInputError(buf: Buffer, message?: RegExp, opts?: ReadOptions): Promise<SbkError> {
  const err = await readError(buf, opts);
  expect(err.exitCode, err.message).toBe(ExitCode.badInput);
  if (message) expect(err.message).toMatch(message);
  return err;
}

/** Offsets of every header in a tar, and the end of its entries (before the zero blocks). */
function tarLayout(buf: Buffer): { entries: { name: string; header: number; data: number; size: number; end: number }[]; end: number } {
  const entries = [];
  let off = 0;
  while (off + 512 <= buf.length) {
    const h = buf.subarray(off, off + 512);
    if (h.every((b) => b === 0)) break;
    const name = h.toString('utf8', 0, h.indexOf(0) >= 0 && h.indexOf(0) < 100 ? h.indexOf(0) : 100);
    const size = parseInt(h.toString('latin1', 124, 136).replace(/\0.*$/, '').trim() || '0', 8);
    const end = off + 512 + Math.ceil(size / 512) * 512;
    entries.push({ name, header: off, data: off + 512, size, end });
    off = end;
  }
  return { entries, end: off };
}

const summary = (got: Got[]) => got.map((g) => `${g.archive}:${g.role}:${g.name}`);

// ---------------------------------------------------------------------------------------------

describe('ArchiveWriter + readArchives: round trip', () => {
  it('a Full: manifest, meta directories and files, one delta per volume, trailer', async () => {
    const deltas = { rootfs: bytes(900, 1), home: bytes(10, 2), opt: bytes(0, 3), var: bytes(999, 4) };
    const pack = tar.pack();
    const out = collectStream(pack);
    const { manifest, trailer } = await writeInto(pack, { deltas });
    pack.finalize();
    const got = await readAll(await out);
    expect(summary(got)).toEqual([
      '0:manifest:manifest.json',
      '0:meta:meta/config',
      '0:meta:meta/fstab',
      '0:meta:meta/ssh/',
      '0:meta:meta/ssh/id_rsa.pub',
      '0:delta:rootfs.delta',
      '0:delta:home.delta',
      '0:delta:opt.delta',
      '0:delta:var.delta',
      '0:trailer:trailer.json',
    ]);
    expect(JSON.parse(got[0]!.body.toString())).toEqual(manifest);
    for (const g of got) expect(g.manifest).toEqual(manifest);
    expect(manifest).toMatchObject({
      sbk: 'manifest',
      format: ARCHIVE_FORMAT,
      container: 'c1',
      time: T0,
      full: true,
      name: `c1_${T0}_Full`,
      parent: null,
      meta: ['config', 'fstab', 'ssh', 'ssh/id_rsa.pub'],
      changelog: false,
      source: { containerDir: '/var/snap/subutai/common/lxc/c1', set: `${BK}/c1/${T0}_Full`, host: 'host1' },
    });
    expect(manifest.volumes).toEqual(record().volumes.map((v) => ({ name: v.name, mount: v.mount, uuid: v.uuid, parentUuid: null })));

    // meta: bodies, types, modes and times as given
    expect(got[1]!.body.toString()).toBe(DEFAULT_META[0]!.data!.toString());
    expect(got[2]!.body.length).toBe(0);
    expect(got[3]!).toMatchObject({ type: 'directory', mode: 0o700, mtime: MTIME });
    expect(got[4]!).toMatchObject({ type: 'file', mode: 0o600, mtime: MTIME });
    // deltas: whole, named by volume, no part number
    for (const [i, v] of VOLS.entries()) {
      const g = got[5 + i]!;
      expect(g.volume).toBe(v);
      expect(g.part).toBeUndefined();
      expect(g.body.equals(deltas[v as keyof typeof deltas])).toBe(true);
      expect(g.mtime).toEqual(new Date(T0 * 1000));
    }
    // trailer: yielded verified, equal to what the writer returned
    expect(got[9]!.trailer).toEqual(trailer);
    expect(trailer!.name).toBe(`c1_${T0}_Full`);
    expect(trailer!.entries.map((e) => e.name)).toEqual([
      'manifest.json',
      'meta/config',
      'meta/fstab',
      'meta/ssh/id_rsa.pub',
      'rootfs.delta',
      'home.delta',
      'opt.delta',
      'var.delta',
    ]);
    expect(trailer!.volumes).toEqual(
      // Format 2: a whole delta's sha256 is of its parts' digests (here one part each).
      Object.fromEntries(Object.entries(deltas).map(([v, d]) => [v, { size: d.length, sha256: sha(Buffer.from(sha(d), 'hex')), parts: 1 }])),
    );
  });

  it('an incremental with a changelog', async () => {
    const changelog = Buffer.from('added /etc/new file.conf\nmodified /home/ubuntu/.bashrc\ndeleted /var/log/old.log\n'.repeat(50));
    const r = record({ full: false, time: T0 + 100, changelog: true });
    const buf = await build({ record: r, changelog });
    const got = await readAll(buf);
    expect(summary(got)).toEqual([
      '0:manifest:manifest.json',
      '0:meta:meta/config',
      '0:meta:meta/fstab',
      '0:meta:meta/ssh/',
      '0:meta:meta/ssh/id_rsa.pub',
      '0:changelog:changelog.txt',
      // default deltas of 300, 1000, 1700 and 2400 bytes in parts of 1000
      '0:delta:rootfs.delta',
      '0:delta:home.delta.000000',
      '0:delta:opt.delta.000000',
      '0:delta:opt.delta.000001',
      '0:delta:var.delta.000000',
      '0:delta:var.delta.000001',
      '0:delta:var.delta.000002',
      '0:trailer:trailer.json',
    ]);
    expect(got[0]!.manifest).toMatchObject({ full: false, name: `c1_${T0 + 100}`, changelog: true, parent: { name: `c1_${T0 - 100}_Full`, full: true, time: T0 - 100 } });
    expect(got[0]!.manifest.parent).not.toHaveProperty('set');
    expect(got[0]!.manifest.volumes.every((v) => typeof v.parentUuid === 'string')).toBe(true);
    expect(got[5]!.body.equals(changelog)).toBe(true);
  });

  it('a container without meta directories and a single volume', async () => {
    const r = record({ volumes: ['rootfs'] });
    const got = await readAll(await build({ record: r, meta: [{ rel: 'config', type: 'file', data: Buffer.from('x') }] }));
    expect(summary(got)).toEqual(['0:manifest:manifest.json', '0:meta:meta/config', '0:delta:rootfs.delta', '0:trailer:trailer.json']);
  });

  const PART = 1000;
  const sizes = [0, 1, PART - 1, PART, PART + 1, 2 * PART - 1, 2 * PART, 2 * PART + 1, 3 * PART - 1, 3 * PART, 3 * PART + 1, 7 * PART + 123];
  const chunkings: [string, number[]][] = [
    ['one chunk', [1 << 30]],
    ['1-byte chunks', [1]],
    ['7-byte chunks', [7]],
    ['part-sized chunks', [PART]],
    ['1.5-part chunks', [1500]],
    ['ragged chunks', [1, 999, 2, 1001, 333, 4000]],
  ];
  describe.each(chunkings)('deltas in %s', (_what, chunking) => {
    it.each(sizes)('%i bytes: one <vol>.delta below the part size, numbered parts from it on', async (size) => {
      const data = bytes(size, size + 11);
      const r = record({ volumes: ['rootfs', 'home'] });
      const pack = tar.pack();
      const out = collectStream(pack);
      const manifest = manifestOf({ record: r });
      const w = new ArchiveWriter(pack, manifest, PART);
      await w.start();
      let counted = 0;
      await w.addDelta('rootfs', iter(chunks(data, chunking)), (n) => (counted += n));
      await w.addDelta('home', iter([Buffer.from('h')]));
      const trailer = await w.finish();
      pack.finalize();
      const got = await readAll(await out);
      expect(counted).toBe(size);

      const parts = got.filter((g) => g.volume === 'rootfs');
      const nParts = size < PART ? 1 : Math.ceil(size / PART);
      expect(parts).toHaveLength(nParts);
      if (size < PART) {
        expect(parts[0]!.name).toBe('rootfs.delta');
        expect(parts[0]!.part).toBeUndefined();
      } else {
        expect(parts.map((p) => p.name)).toEqual(Array.from({ length: nParts }, (_, i) => deltaPartName('rootfs', i)));
        expect(parts.map((p) => p.part)).toEqual(Array.from({ length: nParts }, (_, i) => i));
        // every part full but the last, which is never empty
        for (const p of parts.slice(0, -1)) expect(p.body.length).toBe(PART);
        expect(parts.at(-1)!.body.length).toBe(size - (nParts - 1) * PART);
        // lexical order is stream order (`cat rootfs.delta*` restores by hand)
        expect([...parts.map((p) => p.name)].sort()).toEqual(parts.map((p) => p.name));
      }
      expect(Buffer.concat(parts.map((p) => p.body)).equals(data)).toBe(true);
      // Format 2: the whole delta's sha256 is of its parts' digests, in order.
      const ofParts = sha(Buffer.concat(parts.map((p) => Buffer.from(sha(p.body), 'hex'))));
      expect(trailer.volumes.rootfs).toEqual({ size, sha256: ofParts, parts: nParts });
      expect(got.at(-1)!.trailer).toEqual(trailer);
    });
  });

  it('deltaPartName: six digits', () => {
    expect(deltaPartName('rootfs', 0)).toBe('rootfs.delta.000000');
    expect(deltaPartName('var', 123456)).toBe('var.delta.123456');
    expect(DEFAULT_PART_SIZE).toBe(8 * 1024 * 1024);
  });

  it('concatenated archives in one stream (as sbk-send writes several backups)', async () => {
    const a = { record: record({ time: T0 }) };
    const b = { record: record({ time: T0 + 100, full: false }) };
    const c = { record: record({ container: 'web_2', time: T0 + 5, volumes: ['rootfs'] }) };
    const got = await readAll(await build(a, b, c));
    expect(got.filter((g) => g.role === 'manifest').map((g) => [g.archive, g.manifest.name])).toEqual([
      [0, `c1_${T0}_Full`],
      [1, `c1_${T0 + 100}`],
      [2, `web_2_${T0 + 5}_Full`],
    ]);
    expect(got.filter((g) => g.role === 'trailer').map((g) => [g.archive, g.trailer!.name])).toEqual([
      [0, `c1_${T0}_Full`],
      [1, `c1_${T0 + 100}`],
      [2, `web_2_${T0 + 5}_Full`],
    ]);
    for (const g of got) expect(g.manifest.name).toBe(got.find((x) => x.archive === g.archive && x.role === 'manifest')!.manifest.name);
  });

  it('tar files concatenated (cat a.tar b.tar), end blocks between them', async () => {
    const a = await build({ record: record({ time: T0 }) });
    const b = await build({ record: record({ time: T0 + 100, full: false }) });
    const got = await readAll(Buffer.concat([a, b]));
    expect(got.filter((g) => g.role === 'trailer').map((g) => g.archive)).toEqual([0, 1]);
  });

  it('the same entries whatever the size of the chunks the input arrives in', async () => {
    const buf = await build({ changelog: Buffer.from('added /x\n') , record: record({ changelog: true }) });
    const want = summary(await readAll(buf));
    for (const size of [1, 511, 512, 513, 10_000, buf.length]) expect(summary(await readAll(buf, {}, size))).toEqual(want);
  });

  it('a reader that skips the bodies still gets the archive verified', async () => {
    const buf = await build();
    const roles: string[] = [];
    for await (const e of readArchives(input(buf))) {
      roles.push(e.role);
      if (e.role === 'trailer') expect(e.trailer?.sbk).toBe('trailer');
    }
    expect(roles.at(-1)).toBe('trailer');
    // ... and a skipped body of a corrupt entry is still caught
    const bad = Buffer.from(buf);
    const rootfs = tarLayout(bad).entries.find((e) => e.name === 'rootfs.delta')!;
    bad[rootfs.data + 5] ^= 0xff;
    const err = await within(
      (async () => {
        for await (const _ of readArchives(input(bad))) void _;
      })().catch((e: unknown) => e),
    );
    expect((err as SbkError).exitCode).toBe(ExitCode.corrupt);
  });

  it('a reader that stops reading a body part way: the rest is still read and checked', async () => {
    const buf = await build({ deltas: { rootfs: bytes(900_000, 5), home: bytes(10, 2), opt: bytes(20, 3), var: bytes(30, 4) }, partSize: 1 << 20 });
    let trailer: Trailer | undefined;
    for await (const e of readArchives(input(buf, 16 * 1024))) {
      if (e.role === 'delta') {
        for await (const _ of e.body) break; // one chunk, then stop
      }
      if (e.role === 'trailer') trailer = e.trailer;
    }
    expect(trailer?.volumes.rootfs?.size).toBe(900_000);
  });

  it('a reader that stops after the manifest (reading the head of an archive)', async () => {
    const buf = await build();
    let manifest: Manifest | undefined;
    for await (const e of readArchives(input(buf))) {
      manifest = e.manifest;
      break;
    }
    expect(manifest?.name).toBe(`c1_${T0}_Full`);
  });

  it('the writer refuses a changelog that grows or shrinks while it is archived', async () => {
    for (const [body, size] of [
      [Buffer.from('0123456789'), 5],
      [Buffer.from('0123'), 10],
    ] as const) {
      const pack = tar.pack();
      void collectStream(pack).catch(() => {});
      const w = new ArchiveWriter(pack, manifestOf({ changelog: true }), 1000);
      await w.start();
      await expect(within(w.addChangelog(iter([body]), size))).rejects.toThrow(/changelog.txt (grew|shrank) while being archived/);
      pack.destroy();
    }
  });
});

describe('readArchives: not an sbk stream (exit 3)', () => {
  it('empty input', async () => {
    await badInputError(Buffer.alloc(0), /empty input/);
    await badInputError(Buffer.alloc(1024), /empty input/);
  });

  it('gzip data (an archive that was not gunzipped)', async () => {
    await badInputError(gzipSync(await build()), /not a tar stream/);
  });

  it('NDJSON records, text, binary', async () => {
    await badInputError(Buffer.from('{"sbk":"backup"}\n'.repeat(40)), /not a tar stream/);
    await badInputError(Buffer.from('hello\n'), /not a tar stream/);
    await badInputError(bytes(5000), /not a tar stream/);
  });

  it('a tar that is not an sbk archive (its first entry is not manifest.json)', async () => {
    await badInputError(rawTar([{ name: 'README', body: 'hi' }, { name: 'manifest.json', body: '{}' }]), /not an sbk archive \(the first entry is 'README', not manifest.json\)/);
    await badInputError(rawTar([{ name: 'manifest.json', type: '5' }]), /not an sbk archive/);
    await badInputError(rawTar([{ name: 'manifest.json', type: '2', linkname: '/etc/passwd' }]), /not an sbk archive/);
    await badInputError(rawTar([{ name: 'rootfs.delta', body: 'x' }]), /not an sbk archive/);
  });

  it('archives of format 1 (every sbk before format 2) still verify: a whole delta\'s sha256 is of its bytes there', async () => {
    const m1 = { ...manifestOf({ record: record({ volumes: ['rootfs'] }) }), format: 1 };
    const parts = [bytes(3000, 1), bytes(3000, 2), bytes(17, 3)];
    const middle = parts.map((b, i) => ({ name: deltaPartName('rootfs', i), body: b }));
    const got = await readAll(handmade(middle, { manifest: m1 }));
    expect(got.at(-1)!.trailer!.volumes.rootfs).toEqual({ size: 6017, sha256: sha(Buffer.concat(parts)), parts: 3 });
    // The same archive with format 2's digest (of the parts' digests) is refused: the format says which.
    const ofParts = sha(Buffer.concat(parts.map((b) => Buffer.from(sha(b), 'hex'))));
    await corruptError(
      handmade(middle, { manifest: m1, tweak: (t) => (t.volumes.rootfs!.sha256 = ofParts) }),
      /the delta of volume rootfs fails its check/,
    );
    const m2 = manifestOf({ record: record({ volumes: ['rootfs'] }) });
    expect(m2.format).toBe(2);
    await corruptError(
      handmade(middle, { manifest: m2, tweak: (t) => (t.volumes.rootfs!.sha256 = sha(Buffer.concat(parts))) }),
      /the delta of volume rootfs fails its check/,
    );
  });

  it('a trailer of another format than its manifest', async () => {
    await corruptError(handmade([], { tweak: (t) => (t.format = 1) }), /the trailer is of format 1, the manifest of 2/);
  });

  it('an archive of a newer format', async () => {
    const m = { ...manifestOf(), format: ARCHIVE_FORMAT + 1 };
    await badInputError(handmade([], { manifest: m as Manifest }), new RegExp(`archive format ${ARCHIVE_FORMAT + 1} is not supported \\(this sbk reads 1 and 2\\)`));
  });

  it('the source is named in messages', async () => {
    const err = await badInputError(Buffer.alloc(0), undefined, { source: '/b/c1_1.tar.gz' });
    expect(err.message).toMatch(/^\/b\/c1_1.tar.gz: /);
  });
});

describe('readArchives: corrupt archives (exit 4)', () => {
  it('a flipped byte in the data of each entry', async () => {
    const buf = await build({ record: record({ changelog: true }), changelog: Buffer.from('added /a\n'.repeat(20)) });
    const { entries } = tarLayout(buf);
    expect(entries.length).toBeGreaterThan(10);
    for (const e of entries) {
      if (e.size === 0) continue;
      for (const at of [0, Math.floor(e.size / 2), e.size - 1]) {
        const bad = Buffer.from(buf);
        bad[e.data + at] ^= 0x01;
        const err = await readError(bad);
        expect([ExitCode.corrupt, ExitCode.badInput], `${e.name}@${at}: ${err.message}`).toContain(err.exitCode);
        if (!['manifest.json', 'trailer.json'].includes(e.name)) expect(err.message).toContain(e.name.replace(/\.delta(\.\d+)?$/, ''));
      }
    }
  });

  it('a flipped byte in the header of each entry', async () => {
    const buf = await build();
    for (const e of tarLayout(buf).entries) {
      for (const at of [0, 100, 124, 136, 156, 257, 300]) {
        const bad = Buffer.from(buf);
        bad[e.header + at] ^= 0x04;
        const err = await readError(bad);
        expect([ExitCode.corrupt, ExitCode.badInput], `${e.name}+${at}: ${err.message}`).toContain(err.exitCode);
      }
    }
  });

  it('cut at every entry boundary: the missing trailer is noticed', async () => {
    const buf = await build({ record: record({ changelog: true }), changelog: Buffer.from('added /a\n') });
    const { entries } = tarLayout(buf);
    const trailerAt = entries.find((e) => e.name === 'trailer.json')!;
    for (const e of entries) {
      if (e.header === 0) continue;
      for (const withEnd of [false, true]) {
        // cut here, with or without end-of-archive blocks after the cut (a tar that looks whole)
        const cut = Buffer.concat([buf.subarray(0, e.header), withEnd ? Buffer.alloc(1024) : Buffer.alloc(0)]);
        const err = await corruptError(cut);
        if (e.header <= trailerAt.header) expect(err.message).toMatch(/is incomplete: the stream ends after '.*' without a trailer \(truncated\?\)$/);
      }
    }
    // Cut after the trailer, before the end blocks: every entry is there and verified.
    expect(summary(await readAll(buf.subarray(0, trailerAt.end))).at(-1)).toBe('0:trailer:trailer.json');
  });

  it('cut in the middle of each entry, of each header, of the end blocks', async () => {
    const buf = await build();
    const layout = tarLayout(buf);
    for (const e of layout.entries) {
      if (e.header === 0) {
        // Less than one header: nothing tells a cut archive from something that is not a tar.
        await badInputError(buf.subarray(0, 100), /not a tar stream/);
        await badInputError(buf.subarray(0, 511), /not a tar stream/);
      } else {
        await corruptError(buf.subarray(0, e.header + 100));
        await corruptError(buf.subarray(0, e.header + 511));
      }
      if (e.size > 1) await corruptError(buf.subarray(0, e.data + Math.floor(e.size / 2)));
      if (e.size > 0) await corruptError(buf.subarray(0, e.data + e.size));
    }
    // In the end blocks: the trailer has been verified and yielded; the cut is still an error.
    await corruptError(buf.subarray(0, layout.end + 100));
  });

  it('two archives, the second cut: the first is yielded whole, then the error', async () => {
    const a = await build({ record: record({ time: T0 }) });
    const b = await build({ record: record({ time: T0 + 1 }) });
    const whole = Buffer.concat([a, b]);
    const second = tarLayout(b);
    const cut = whole.subarray(0, a.length + second.entries.at(-2)!.end);
    const seen: string[] = [];
    const err = await within(
      (async () => {
        for await (const e of readArchives(input(cut))) {
          await collectStream(e.body);
          seen.push(`${e.archive}:${e.role}`);
        }
      })().catch((x: unknown) => x),
    );
    expect(seen).toContain('0:trailer');
    expect(seen).not.toContain('1:trailer');
    expect((err as SbkError).exitCode).toBe(ExitCode.corrupt);
    expect((err as SbkError).message).toMatch(new RegExp(`archive c1_${T0 + 1}_Full is incomplete`));
  });

  it('no trailer (the writer never finished)', async () => {
    const pack = tar.pack();
    const out = collectStream(pack);
    await writeInto(pack, { noTrailer: true });
    pack.finalize();
    const err = await corruptError(await out);
    expect(err.message).toBe(`input: archive c1_${T0}_Full is incomplete: the stream ends after 'var.delta.000002' without a trailer (truncated?)`);
  });

  describe('a trailer that does not match', () => {
    const entries = (): RawEntry[] => [
      manifestEntry(manifestOf({ record: record({ volumes: ['rootfs', 'home'] }), meta: ['config'] })),
      { name: 'meta/config', body: 'lxc.rootfs = x\n' },
      { name: 'rootfs.delta', body: bytes(700, 1) },
      { name: 'home.delta', body: bytes(70, 2) },
    ];
    const withTrailer = (tweak: (t: Trailer) => void, es = entries()) => rawTar([...es, trailerFor(es, tweak)]);

    it('matching, for reference', async () => {
      expect(summary(await readAll(withTrailer(() => {}))).at(-1)).toBe('0:trailer:trailer.json');
    });

    it.each<[string, (t: Trailer) => void, RegExp]>([
      ['a wrong size', (t) => (t.entries[2]!.size += 1), /entry 'rootfs.delta' has 700 bytes, the trailer says 701/],
      ['a wrong sha256', (t) => (t.entries[1]!.sha256 = sha(Buffer.from('other'))), /entry 'meta\/config' fails its sha256 check/],
      ['a wrong sha256 of the manifest', (t) => (t.entries[0]!.sha256 = '0'.repeat(64)), /entry 'manifest.json' fails its sha256 check/],
      ['another name', (t) => (t.entries[1]!.name = 'meta/other'), /entry 'meta\/config' found where the trailer lists 'meta\/other'/],
      ['an entry missing from it', (t) => t.entries.splice(1, 1), /entry 'meta\/config' found where the trailer lists 'rootfs.delta'/],
      ['the last entry missing from it', (t) => t.entries.pop(), /entry 'home.delta' is not in the trailer/],
      ['an entry the archive lacks', (t) => t.entries.push({ name: 'var.delta', size: 1, sha256: '0'.repeat(64) }), /entry 'var.delta' is missing/],
      ['a wrong whole-delta sha256', (t) => (t.volumes.rootfs!.sha256 = '0'.repeat(64)), /the delta of volume rootfs fails its check/],
      ['a wrong whole-delta size', (t) => (t.volumes.home!.size = 71), /the delta of volume home fails its check/],
      ['a wrong part count', (t) => (t.volumes.home!.parts = 2), /the delta of volume home fails its check/],
      ['a volume missing from it', (t) => delete t.volumes.home, /volume home is not in the trailer/],
      ['another archive’s name', (t) => (t.name = 'c1_1_Full'), /the trailer belongs to c1_1_Full/],
      ['not a trailer', (t) => ((t as unknown as Record<string, unknown>).sbk = 'manifest'), /trailer.json is not an sbk trailer/],
      ['entries not a list', (t) => ((t as unknown as Record<string, unknown>).entries = {}), /trailer.json is not an sbk trailer/],
      ['null entries in the list', (t) => ((t.entries as unknown[])[1] = null), /entry 'meta\/config' is not in the trailer/],
      ['a null volume', (t) => ((t.volumes as Record<string, unknown>).home = null), /volume home is not in the trailer/],
    ])('%s', async (_what, tweak, message) => {
      await corruptError(withTrailer(tweak), message);
    });

    it('not JSON, or JSON that is not an object', async () => {
      for (const body of ['{"sbk": "trailer",', '[]', 'null', '"trailer"', '']) {
        const es = entries();
        await corruptError(rawTar([...es, { name: 'trailer.json', body }]), /trailer.json is not valid JSON/);
      }
    });

    it('a changelog the manifest does not announce, or one it announces missing', async () => {
      const es = entries();
      es.splice(2, 0, { name: 'changelog.txt', body: 'added /x\n' });
      await corruptError(withTrailer(() => {}, es), /changelog.txt is not announced/);
      const m = manifestOf({ record: record({ volumes: ['rootfs', 'home'] }), meta: ['config'], changelog: true });
      const es2 = entries();
      es2[0] = manifestEntry(m);
      await corruptError(withTrailer(() => {}, es2), /changelog.txt is missing/);
    });

    it('the delta of a volume is missing altogether', async () => {
      const es = entries().filter((e) => e.name !== 'home.delta');
      await corruptError(withTrailer(() => {}, es), /the delta of volume home is missing/);
    });
  });

  describe('entries out of place', () => {
    const m2 = manifestOf({ record: record({ volumes: ['rootfs', 'home'] }) });
    const d = (name: string, body: Buffer | string = 'x'): RawEntry => ({ name, body });

    it.each<[string, RawEntry[], RegExp]>([
      ['a file after the deltas', [d('rootfs.delta'), d('home.delta'), d('notes.txt')], /unexpected entry 'notes.txt'/],
      ['a meta file after the deltas', [d('rootfs.delta'), d('meta/late')], /meta entry 'meta\/late' after the deltas/],
      ['a meta file after the changelog', [d('changelog.txt'), d('meta/late'), d('rootfs.delta'), d('home.delta')], /meta entry 'meta\/late' after the changelog/],
      ['a changelog after the deltas', [d('rootfs.delta'), d('changelog.txt')], /unexpected changelog.txt here/],
      ['two changelogs', [d('changelog.txt'), d('changelog.txt')], /unexpected changelog.txt here/],
      ['a second manifest', [d('rootfs.delta'), d('manifest.json', '{}')], /unexpected entry 'manifest.json'/],
      ['a delta of a volume the manifest does not list', [d('rootfs.delta'), d('var.delta')], /entry 'var.delta' names a volume the manifest does not list/],
      ['volumes in another order than the manifest’s', [d('home.delta'), d('rootfs.delta')], /entry 'rootfs.delta' is out of order/],
      ['a volume twice', [d('rootfs.delta'), d('home.delta'), d('rootfs.delta')], /entry 'rootfs.delta' is out of order/],
      ['a volume split by another', [d('rootfs.delta.000000'), d('home.delta'), d('rootfs.delta.000001')], /entry 'rootfs.delta.000001' is out of order/],
      ['part 1 first', [d('rootfs.delta.000001'), d('rootfs.delta.000000')], /entry 'rootfs.delta.000001': part 000000 is missing/],
      ['a missing middle part', [d('rootfs.delta.000000'), d('rootfs.delta.000002')], /entry 'rootfs.delta.000002' is out of order \(expected part rootfs.delta.000001\)/],
      ['a part twice', [d('rootfs.delta.000000'), d('rootfs.delta.000000')], /entry 'rootfs.delta.000000' is out of order \(expected part rootfs.delta.000001\)/],
      ['parts after a whole delta', [d('rootfs.delta'), d('rootfs.delta.000000')], /entry 'rootfs.delta.000000' is out of order/],
      ['a whole delta after parts', [d('rootfs.delta.000000'), d('rootfs.delta')], /entry 'rootfs.delta' is out of order/],
      ['a delta with a 7-digit part', [d('rootfs.delta.0000000')], /unexpected entry 'rootfs.delta.0000000'/],
    ])('%s', async (_what, middle, message) => {
      // Even with a trailer that lists them so: the order is checked as the entries come.
      await corruptError(handmade(middle, { manifest: m2 }), message);
    });

    it('a missing last part is caught by the trailer’s part count', async () => {
      const es: RawEntry[] = [manifestEntry(m2), d('rootfs.delta.000000', bytes(10)), d('rootfs.delta.000001', bytes(5)), d('home.delta')];
      const full = trailerFor(es);
      const t = JSON.parse(String(full.body)) as Trailer;
      const cut = es.filter((e) => e.name !== 'rootfs.delta.000001');
      t.entries = t.entries.filter((e) => e.name !== 'rootfs.delta.000001');
      await corruptError(rawTar([...cut, { name: 'trailer.json', body: JSON.stringify(t) }]), /the delta of volume rootfs fails its check/);
    });
  });

  describe('hostile names', () => {
    it.each([
      '/etc/passwd',
      '../x',
      '../rootfs.delta',
      './rootfs.delta',
      'rootfs.delta/../../x',
      'meta/../../x',
      'meta/..',
      'meta//x',
      'meta/./x',
      'meta/a/../../x',
      'meta/a\\..\\x',
      '/meta/x',
      '..delta',
      '.delta',
      'meta.delta',
    ])('%j', async (name) => {
      const err = await corruptError(handmade([{ name, body: 'x' }, { name: 'rootfs.delta', body: 'x' }]));
      expect(err.message).toMatch(/unsafe|unexpected|not list|out of order|is a/);
      expect(err.message).toContain(`'${name}'`);
    });

    it('a name over 100 bytes (GNU long name) that escapes', async () => {
      const pack = tar.pack();
      const out = collectStream(pack);
      const m = manifestOf({ record: record({ volumes: ['rootfs'] }) });
      pack.entry({ name: 'manifest.json' }, JSON.stringify(m));
      pack.entry({ name: 'meta/' + 'a/'.repeat(60) + '../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../../x' }, 'x');
      pack.finalize();
      await corruptError(await out, /unsafe entry name/);
    });

    it('isSafeMetaPath', () => {
      for (const ok of ['config', 'fstab', 'ssh/id_rsa.pub', 'a/b/c', '.hidden', 'a..b', 'ünï cødé']) expect(isSafeMetaPath(ok), ok).toBe(true);
      for (const bad of ['', '/x', 'a//b', './a', 'a/./b', '..', '../a', 'a/..', 'a/', 'a\\b', 'a\0b']) expect(isSafeMetaPath(bad), bad).toBe(false);
    });
  });

  describe('entries that are not files', () => {
    it.each<[string, RawEntry]>([
      ['a symlink in meta', { name: 'meta/config', type: '2', linkname: '/etc/shadow' }],
      ['a hard link in meta', { name: 'meta/config', type: '1', linkname: 'manifest.json' }],
      ['a character device in meta', { name: 'meta/null', type: '3' }],
      ['a block device in meta', { name: 'meta/sda', type: '4' }],
      ['a fifo in meta', { name: 'meta/fifo', type: '6' }],
      ['a symlink as a delta', { name: 'rootfs.delta', type: '2', linkname: '/dev/sda' }],
      ['a hard link as a delta', { name: 'rootfs.delta', type: '1', linkname: '/etc/passwd' }],
      ['a directory as a delta', { name: 'rootfs.delta', type: '5' }],
      ['a symlink as the trailer', { name: 'trailer.json', type: '2', linkname: 'x' }],
      ['a contiguous file', { name: 'meta/c', type: '7', body: 'x' }],
      ['an unknown type', { name: 'meta/v', type: 'V' }],
    ])('%s', async (_what, entry) => {
      await corruptError(handmade([entry, { name: 'rootfs.delta', body: 'x' }]), /is a|unexpected/);
    });

    it('a file named meta (no place to put it)', async () => {
      await corruptError(handmade([{ name: 'meta', body: 'x' }, { name: 'rootfs.delta', body: 'x' }]), /'meta'/);
    });
  });

  describe('bad manifests', () => {
    const ROOT = { mode: 0o755, uid: 0, gid: 0, atime: '1700000000.000000001', mtime: '1700000000.123456789' };
    const base = () => JSON.parse(JSON.stringify(manifestOf({ record: record({ volumes: ['rootfs', 'home'] }) }))) as Record<string, any>;
    it.each<[string, (m: Record<string, any>) => void, RegExp]>([
      ['not a manifest', (m) => (m.sbk = 'backup'), /manifest.json: not an sbk manifest/],
      ['a container named ../x', (m) => (m.container = '../x'), /manifest.json: invalid container name/],
      ['a container name with a space', (m) => (m.container = 'a b'), /invalid container name/],
      ['an empty container name', (m) => (m.container = ''), /invalid container name/],
      ['no container', (m) => delete m.container, /invalid container name/],
      ['a volume named ../x', (m) => (m.volumes[1].name = '../x'), /invalid volume name "..\/x"/],
      ['a volume named meta', (m) => (m.volumes[1].name = 'meta'), /invalid volume name "meta"/],
      ['a volume named /etc', (m) => (m.volumes[1].name = '/etc'), /invalid volume name/],
      ['a volume without a name', (m) => delete m.volumes[1].name, /invalid volume name undefined/],
      ['a null volume', (m) => (m.volumes[1] = null), /invalid volume name/],
      ['a volume twice', (m) => (m.volumes[1].name = 'rootfs'), /volume rootfs listed twice/],
      ['no volumes', (m) => (m.volumes = []), /no volumes/],
      ['volumes not a list', (m) => (m.volumes = { rootfs: {} }), /no volumes/],
      ['a relative mount point', (m) => (m.volumes[1].mount = 'home'), /invalid mount point of home/],
      ['no time', (m) => delete m.time, /invalid time/],
      ['a fractional time', (m) => (m.time = 1.5), /invalid time/],
      ['a negative time', (m) => ((m.time = -5), (m.name = 'c1_-5_Full')), /invalid time/],
      ['no full flag', (m) => delete m.full, /invalid full flag/],
      ['no name', (m) => delete m.name, /missing name/],
      ['a name that is not its container, time and kind', (m) => (m.name = '../../etc/cron.d/x'), /name/],
      ['a name of another time', (m) => (m.name = `c1_${T0 + 1}_Full`), /name/],
      ['an incremental without a parent', (m) => ((m.full = false), (m.name = `c1_${T0}`), (m.parent = null)), /an incremental without a parent/],
      ['a volume root that is not an object', (m) => (m.volumes[1].root = 'x'), /invalid root of home/],
      ['a volume root with a file type in its mode', (m) => (m.volumes[1].root = { ...ROOT, mode: 0o40755 }), /invalid root of home/],
      ['a volume root with a negative uid', (m) => (m.volumes[1].root = { ...ROOT, uid: -1 }), /invalid root of home/],
      ['a volume root without a gid', (m) => (m.volumes[1].root = { ...ROOT, gid: undefined }), /invalid root of home/],
      ['a volume root time as a number', (m) => (m.volumes[1].root = { ...ROOT, mtime: 1700000000 }), /invalid root of home/],
      ['a volume root time without its nanoseconds', (m) => (m.volumes[1].root = { ...ROOT, atime: '1700000000.5' }), /invalid root of home/],
      ['a volume root time that is an option', (m) => (m.volumes[1].root = { ...ROOT, mtime: '--help' }), /invalid root of home/],
    ])('%s', async (_what, mutate, message) => {
      const m = base();
      mutate(m);
      await corruptError(handmade([{ name: 'rootfs.delta', body: 'x' }, { name: 'home.delta', body: 'y' }], { manifest: m as Manifest }), message);
    });

    it('not JSON, or JSON that is not an object', async () => {
      for (const body of ['{"sbk": "manifest"', '[1]', 'null', '42', '', '\u0000\u0001']) {
        await corruptError(rawTar([{ name: 'manifest.json', body }, { name: 'rootfs.delta', body: 'x' }]), /manifest.json is not valid JSON/);
      }
    });

    it('a huge declared size: refused without reading it all', async () => {
      const m = JSON.stringify(manifestOf());
      for (const size of [17 * 1024 * 1024, 8 * 1024 ** 3, 2 ** 40]) {
        const buf = rawTar([{ name: 'manifest.json', body: m, size }], { end: false });
        const started = Date.now();
        await corruptError(buf, /manifest.json|broken|larger/);
        expect(Date.now() - started).toBeLessThan(3000);
      }
    });

    it('a manifest larger than the limit, really there', async () => {
      const big = Buffer.concat([Buffer.from('{"sbk":"manifest","pad":"'), Buffer.alloc(16 * 1024 * 1024 + 10, 0x61), Buffer.from('"}')]);
      await corruptError(rawTar([{ name: 'manifest.json', body: big }]), /manifest.json is larger than 16777216 bytes/);
    });

    it('a huge declared size of a meta file', async () => {
      await corruptError(handmade([{ name: 'meta/config', body: 'x', size: 65 * 1024 * 1024 }], { end: false }), /meta entry 'meta\/config' is too large/);
    });

    it('a meta file over the per-file cap sbk-send keeps to (one rule for writer and readers)', async () => {
      const body = Buffer.alloc(META_FILE_MAX + 1, 0x61);
      await corruptError(handmade([{ name: 'meta/core', body }]), /meta entry 'meta\/core' is too large/);
      // At the cap it is accepted.
      await readAll(handmade([{ name: 'meta/core', body: body.subarray(0, META_FILE_MAX) }, { name: 'rootfs.delta', body: 'x' }]));
    });

    it('meta entries that together pass the total cap', async () => {
      const n = Math.ceil(META_TOTAL_MAX / (META_FILE_MAX + 512));
      const files = Array.from({ length: n }, (_, i) => ({ name: `meta/f${i}`, body: Buffer.alloc(META_FILE_MAX, 0x62) }));
      await corruptError(handmade(files), new RegExp(`meta entry 'meta/f${n - 1}' takes the meta entries past ${META_TOTAL_MAX} bytes`));
    });

    it('a nested subvolume in the manifest with an unsafe path or an unlisted volume', async () => {
      for (const [n, msg] of [
        [{ volume: 'rootfs', path: '../etc', mode: 0o755, uid: 0, gid: 0 }, /unsafe nested subvolume path/],
        [{ volume: 'home', path: 'x', mode: 0o755, uid: 0, gid: 0 }, /unlisted volume/],
        [{ volume: 'rootfs', path: 'x', mode: 0o17777, uid: 0, gid: 0 }, /invalid mode or owner/],
      ] as const) {
        const m = { ...manifestOf({ record: record({ volumes: ['rootfs'] }) }), nestedSubvolumes: [n] };
        await corruptError(handmade([{ name: 'rootfs.delta', body: 'x' }], { manifest: m as Manifest }), msg);
      }
    });

    it('a huge declared size of the trailer', async () => {
      const es = [manifestEntry(manifestOf({ record: record({ volumes: ['rootfs'] }) })), { name: 'rootfs.delta', body: 'x' }];
      const t = trailerFor(es);
      await corruptError(rawTar([...es, { ...t, size: 2 ** 36 }], { end: false }), /trailer.json|broken/);
    });
  });
});

describe('volume roots in the manifest', () => {
  it('formatRootTime writes seconds and nine decimals, also before 1970', () => {
    expect(formatRootTime(1_700_000_000_123_456_789n)).toBe('1700000000.123456789');
    expect(formatRootTime(5n)).toBe('0.000000005');
    expect(formatRootTime(0n)).toBe('0.000000000');
    expect(formatRootTime(-1n)).toBe('-1.999999999');
  });
  it('a manifest with roots reads back; one without (older archives) too', async () => {
    const root = { mode: 0o1777, uid: 100000, gid: 100001, atime: '1.000000000', mtime: '1700000000.123456789' };
    const m = manifestOf({ record: record({ volumes: ['rootfs', 'home'] }) });
    for (const withRoot of [true, false]) {
      const mm = JSON.parse(JSON.stringify(m)) as Manifest;
      if (withRoot) mm.volumes[0]!.root = root;
      const got = await readAll(handmade([{ name: 'rootfs.delta', body: 'x' }, { name: 'home.delta', body: 'y' }], { manifest: mm }));
      expect(got[0]!.manifest.volumes[0]!.root).toEqual(withRoot ? root : undefined);
      expect(got.at(-1)!.role).toBe('trailer');
    }
  });
});

describe('readArchives: legacy archives of the original Subutai tool', () => {
  // As the original tool made them: `tar czf` in a staging directory holding the deltas and meta/.
  const legacyEntries = (): RawEntry[] => [
    { name: 'home.delta', body: bytes(300, 1) },
    { name: 'meta/', type: '5', mode: 0o755 },
    { name: 'meta/config', body: 'lxc.rootfs = /var/snap/subutai/common/lxc/c1/rootfs\n' },
    { name: 'meta/fstab', body: '' },
    { name: 'opt.delta', body: bytes(200, 2) },
    { name: 'rootfs.delta', body: bytes(900, 3) },
    { name: 'var.delta', body: bytes(100, 4) },
  ];

  it('are refused without the option, as not sbk archives', async () => {
    await badInputError(rawTar(legacyEntries()), /not an sbk archive \(the first entry is 'home.delta', not manifest.json\)/);
  });

  it('are read with opts.legacy: every delta and meta file, no manifest, no trailer', async () => {
    const got = await readAll(rawTar(legacyEntries()), { legacy: true });
    expect(summary(got)).toEqual([
      '0:delta:home.delta',
      '0:meta:meta/',
      '0:meta:meta/config',
      '0:meta:meta/fstab',
      '0:delta:opt.delta',
      '0:delta:rootfs.delta',
      '0:delta:var.delta',
    ]);
    expect(got[0]!.manifest).toMatchObject({ sbk: 'manifest', format: 0, volumes: [] });
    expect(got.find((g) => g.name === 'rootfs.delta')!.body.equals(bytes(900, 3))).toBe(true);
  });

  it('starting with meta/ as well', async () => {
    const es = legacyEntries();
    const got = await readAll(rawTar([es[1]!, es[2]!, es[5]!]), { legacy: true });
    expect(summary(got)).toEqual(['0:meta:meta/', '0:meta:meta/config', '0:delta:rootfs.delta']);
  });

  it('an sbk archive read with opts.legacy is read as an sbk archive (verified)', async () => {
    const buf = await build();
    expect(summary(await readAll(buf, { legacy: true })).at(-1)).toBe('0:trailer:trailer.json');
    const bad = Buffer.from(buf);
    bad[tarLayout(bad).entries.find((e) => e.name === 'rootfs.delta')!.data] ^= 1;
    await corruptError(bad, /rootfs/, { legacy: true });
  });

  it('still refuses hostile names, links and odd entries', async () => {
    for (const e of [
      { name: '../rootfs.delta', body: 'x' },
      { name: 'meta/../../etc/passwd', body: 'x' },
      { name: 'meta/config', type: '2', linkname: '/etc/shadow' },
      { name: 'trailer.json', body: '{}' },
      { name: 'evil.sh', body: 'rm -rf /' },
    ] as RawEntry[]) {
      await corruptError(rawTar([{ name: 'rootfs.delta', body: 'x' }, e]), undefined, { legacy: true });
    }
    await corruptError(rawTar([{ name: 'rootfs.delta.000001', body: 'x' }]), /without its earlier parts/, { legacy: true });
  });

  it('a legacy first entry that is neither a delta nor meta is not an archive', async () => {
    await badInputError(rawTar([{ name: 'config', body: 'x' }]), /not an sbk archive/, { legacy: true });
  });

  it('a truncated legacy archive: a cut inside an entry is caught (a cut at a boundary cannot be)', async () => {
    const buf = rawTar(legacyEntries());
    const rootfs = tarLayout(buf).entries.find((e) => e.name === 'rootfs.delta')!;
    await corruptError(buf.subarray(0, rootfs.data + 100), /broken/, { legacy: true });
  });
});

describe('readArchives: random damage (property)', () => {
  it('a flipped byte or a cut anywhere: an SbkError (3 or 4), or exactly the original content', async () => {
    const original = await build(
      { record: record({ changelog: true }), changelog: Buffer.from('added /etc/x\n'.repeat(30)), deltas: { rootfs: bytes(2500, 1), home: bytes(999, 2), opt: bytes(0, 3), var: bytes(1000, 4) } },
      { record: record({ time: T0 + 60, full: false, volumes: ['rootfs'] }), deltas: { rootfs: bytes(1200, 9) } },
    );
    const want = await readAll(original);
    const key = (g: Got[]) => g.map((x) => `${x.archive}:${x.role}:${x.name}:${sha(x.body)}`);
    const wantKey = key(want);
    const mutation = fc.oneof(
      fc.record({ kind: fc.constant('flip' as const), at: fc.nat({ max: original.length - 1 }), mask: fc.integer({ min: 1, max: 255 }) }),
      fc.record({ kind: fc.constant('cut' as const), at: fc.nat({ max: original.length - 1 }), mask: fc.constant(0) }),
      fc.record({ kind: fc.constant('flip-header' as const), at: fc.nat({ max: tarLayout(original).entries.length - 1 }), mask: fc.integer({ min: 1, max: 255 }) }),
    );
    let errors = 0;
    let same = 0;
    await fc.assert(
      fc.asyncProperty(mutation, fc.integer({ min: 1, max: 3000 }), async (m, chunkSize) => {
        let bad: Buffer;
        if (m.kind === 'cut') bad = original.subarray(0, m.at);
        else {
          bad = Buffer.from(original);
          const at = m.kind === 'flip' ? m.at : tarLayout(original).entries[m.at]!.header + (m.mask % 512);
          bad[at] ^= m.mask;
        }
        const result = await within(readAll(bad, {}, chunkSize), 5000).then(
          (got) => ({ got }),
          (err: unknown) => ({ err }),
        );
        if ('err' in result) {
          const err = result.err;
          if (!(err instanceof SbkError)) throw new Error(`${m.kind}@${m.at}^${m.mask}: not an SbkError: ${(err as Error)?.stack ?? String(err)}`);
          expect([ExitCode.corrupt, ExitCode.badInput]).toContain(err.exitCode);
          errors++;
        } else {
          expect(key(result.got)).toEqual(wantKey);
          same++;
        }
      }),
      { seed: 20161024, numRuns: 400, endOnFailure: true },
    );
    expect(errors).toBeGreaterThan(300);
    expect(same + errors).toBe(400);
  });
});

// ---------------------------------------------------------------------------------------------
// Fixtures: archives made from real btrfs send streams (see test/fixtures/archives/README.md).

describe('fixture archives', () => {
  const have = readdirSync(FIXTURES);
  const find = (re: RegExp) => {
    const f = have.filter((n) => re.test(n));
    expect(f, String(re)).toHaveLength(1);
    return f[0]!;
  };
  const FULL = find(/^fx_\d+_Full\.tar\.gz$/);
  const INCR = find(/^fx_\d+\.tar\.gz$/);
  const LEGACY = find(/^old_\d+_Full\.tar\.gz$/);
  const fixture = (name: string) => readFileSync(path.join(FIXTURES, name));
  const tarOf = (name: string) => gunzipSync(fixture(name));

  /** Reads a .tar.gz through a gunzip stream, as sbk reads archive files. */
  async function readGz(name: string, opts: ReadOptions = {}): Promise<Got[]> {
    const gz = createGunzip();
    Readable.from([fixture(name)]).pipe(gz);
    const out: Got[] = [];
    for await (const e of readArchives(gz, { source: name, ...opts })) {
      out.push({ archive: e.archive, role: e.role, name: e.name, type: e.header.type ?? '?', volume: e.volume, part: e.part, body: await collectStream(e.body), trailer: e.trailer, manifest: e.manifest });
    }
    return out;
  }

  async function gzError(name: string): Promise<SbkError> {
    const err = await within(readGz(name)).then(
      () => undefined,
      (e: unknown) => e,
    );
    if (!(err instanceof SbkError)) throw new Error(`expected an SbkError, got ${String((err as Error)?.stack ?? err)}`);
    expect(err.message).toMatch(new RegExp(`^${name.replace(/\./g, '\\.')}: `));
    expect(err.message).not.toContain('\n');
    return err;
  }

  it('are all there, and small', () => {
    for (const f of ['broken-truncated.tar.gz', 'broken-flipped.tar.gz', 'broken-no-trailer.tar.gz', 'README.md'])
      expect(have, f).toContain(f);
    const total = have.filter((n) => n.endsWith('.tar.gz')).reduce((n, f) => n + fixture(f).length, 0);
    expect(total).toBeLessThan(200 * 1024);
  });

  it('the Full: verified, with real btrfs send streams as deltas', async () => {
    const time = Number(/_(\d+)_Full/.exec(FULL)![1]);
    const got = await readGz(FULL);
    const m = got[0]!.manifest;
    expect(m).toMatchObject({ container: 'fx', time, full: true, name: `fx_${time}_Full`, parent: null, changelog: false });
    expect(m.volumes.map((v) => [v.name, v.mount])).toEqual([
      ['rootfs', '/'],
      ['home', '/home'],
    ]);
    expect(summary(got)).toEqual([
      '0:manifest:manifest.json',
      '0:meta:meta/config',
      '0:meta:meta/fstab',
      '0:delta:rootfs.delta',
      '0:delta:home.delta',
      '0:trailer:trailer.json',
    ]);
    expect(got[1]!.body.toString()).toMatch(/^lxc.utsname = fx$/m);
    for (const d of got.filter((g) => g.role === 'delta')) {
      expect(d.body.subarray(0, 13).toString('latin1')).toBe('btrfs-stream\0');
      expect(got.at(-1)!.trailer!.volumes[d.volume!]).toEqual({ size: d.body.length, sha256: sha(d.body), parts: 1 });
    }
    // `seq 1 2000` is in the rootfs stream as data
    const rootfs = got.find((g) => g.name === 'rootfs.delta')!.body.toString('latin1');
    expect(rootfs).toContain('1999\n2000\n');
  });

  it('the incremental: the Full is its parent, by name and by snapshot UUIDs; much smaller deltas', async () => {
    const full = await readGz(FULL);
    const got = await readGz(INCR);
    const m = got[0]!.manifest;
    const fm = full[0]!.manifest;
    expect(m).toMatchObject({ container: 'fx', full: false, parent: { name: fm.name, time: fm.time, full: true } });
    expect(m.time).toBeGreaterThan(fm.time);
    expect(m.volumes.map((v) => v.parentUuid)).toEqual(fm.volumes.map((v) => v.uuid));
    expect(got.at(-1)!.role).toBe('trailer');
    const size = (g: Got[], v: string) => g.filter((x) => x.volume === v).reduce((n, x) => n + x.body.length, 0);
    expect(size(got, 'rootfs')).toBeLessThan(size(full, 'rootfs') / 10);
  });

  it('both as one stream of gzip members (sbk-pack -o - writes them so)', async () => {
    const both = gunzipSync(Buffer.concat([fixture(FULL), fixture(INCR)]));
    const got = await readAll(both);
    expect(got.filter((g) => g.role === 'trailer').map((g) => [g.archive, g.trailer!.name])).toEqual([
      [0, FULL.replace('.tar.gz', '')],
      [1, INCR.replace('.tar.gz', '')],
    ]);
  });

  it('broken-truncated: corrupt (the gzip data ends early)', async () => {
    const err = await gzError('broken-truncated.tar.gz');
    expect(err.exitCode).toBe(ExitCode.corrupt);
    expect(err.message).toMatch(/gzip data is corrupt|tar stream is broken/);
  });

  it('broken-flipped: corrupt (gzip is fine: only the sha256 tells)', async () => {
    expect(() => gunzipSync(fixture('broken-flipped.tar.gz'))).not.toThrow();
    const err = await gzError('broken-flipped.tar.gz');
    expect(err.exitCode).toBe(ExitCode.corrupt);
    expect(err.message).toMatch(/'rootfs.delta' fails its sha256 check/);
  });

  it('broken-no-trailer: corrupt, "incomplete" (to tar it looks whole)', async () => {
    const err = await gzError('broken-no-trailer.tar.gz');
    expect(err.exitCode).toBe(ExitCode.corrupt);
    expect(err.message).toMatch(/is incomplete: the stream ends after 'home.delta' without a trailer/);
  });

  it('legacy (original Subutai layout): refused without the option, read with it', async () => {
    const t = tarOf(LEGACY);
    await badInputError(t, /not an sbk archive \(the first entry is 'home.delta', not manifest.json\)/);
    const got = await readGz(LEGACY, { legacy: true });
    expect(summary(got)).toEqual(['0:delta:home.delta', '0:delta:rootfs.delta', '0:meta:meta/', '0:meta:meta/config', '0:meta:meta/fstab']);
    const full = await readGz(FULL);
    // The same snapshots, sent the same way: the same streams as in the sbk Full.
    for (const v of ['rootfs', 'home']) {
      const legacy = got.find((g) => g.volume === v)!.body;
      expect(legacy.subarray(0, 13).toString('latin1')).toBe('btrfs-stream\0');
      expect(legacy.length).toBe(full.find((g) => g.volume === v)!.body.length);
    }
  });

  it('every fixture, cut or flipped anywhere in its tar: an SbkError or the same content (sampled)', async () => {
    for (const name of [FULL, INCR]) {
      const buf = tarOf(name);
      const want = summary(await readAll(buf));
      for (let i = 0; i < 40; i++) {
        const at = (i * 7919 * 31) % buf.length;
        for (const bad of [buf.subarray(0, at), Buffer.from(buf).fill(buf[at]! ^ 0x10, at, at + 1)]) {
          const r = await within(readAll(bad)).then(
            (got) => ({ got }),
            (err: unknown) => ({ err }),
          );
          if ('err' in r) {
            expect(r.err, String(r.err)).toBeInstanceOf(SbkError);
            expect([ExitCode.corrupt, ExitCode.badInput]).toContain((r.err as SbkError).exitCode);
          } else expect(summary(r.got)).toEqual(want);
        }
      }
    }
  });
});
