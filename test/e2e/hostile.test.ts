// Hostile archives: entries that try to write outside the restore's temporary directory, or
// that lie about what they are. Each carries a trailer with correct checksums (an attacker can
// compute them), so only the archive rules stand between it and the file system. Every one is
// refused, nothing is written outside, and no trace of the restore is left.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readdir, writeFile, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import path from 'node:path';
import zlib from 'node:zlib';
import tar from 'tar-stream';
import { e2eMode, makeSandbox, sh, type Sandbox } from '../helpers/sandbox.js';
import { cmd, stream } from '../helpers/sendstream-builder.js';

const mode = e2eMode();

interface Entry {
  name: string;
  body?: Buffer;
  type?: tar.Header['type'];
  linkname?: string;
}

const goodManifest = (over: Record<string, unknown> = {}) => ({
  sbk: 'manifest',
  format: 1,
  tool: 'sbk test',
  created: '2026-01-01T00:00:00Z',
  container: 'evil',
  time: 1700000000,
  full: true,
  name: 'evil_1700000000_Full',
  parent: null,
  previous: null,
  volumes: [{ name: 'rootfs', mount: '/', uuid: 'u1', parentUuid: null }],
  source: { containerDir: '/x/evil', set: '/x/s', host: 'h' },
  meta: ['config'],
  changelog: false,
  ...over,
});

/** A gzip'd tar with the given entries and a trailer whose checksums match them. */
async function craft(entries: Entry[], manifest = goodManifest()): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: Buffer) => chunks.push(c));
  const done = new Promise((r) => pack.on('end', r));
  const digests: { name: string; size: number; sha256: string }[] = [];
  const all: Entry[] = [{ name: 'manifest.json', body: Buffer.from(JSON.stringify(manifest)) }, ...entries];
  for (const e of all) {
    const body = e.body ?? Buffer.alloc(0);
    const type = e.type ?? 'file';
    await new Promise<void>((resolve, reject) => {
      const header = { name: e.name, type, size: type === 'file' ? body.length : 0, linkname: e.linkname, mode: 0o644 };
      const s = pack.entry(header, (err) => (err ? reject(err) : resolve()));
      if (type === 'file') s.write(body);
      (s as unknown as { end(): void }).end();
    }).catch(() => {});
    digests.push({ name: e.name, size: body.length, sha256: createHash('sha256').update(body).digest('hex') });
  }
  const deltaBodies = Buffer.concat(all.filter((e) => /\.delta/.test(e.name)).map((e) => e.body ?? Buffer.alloc(0)));
  const trailer = {
    sbk: 'trailer',
    format: 1,
    name: manifest.name,
    entries: digests,
    volumes: { rootfs: { size: deltaBodies.length, sha256: createHash('sha256').update(deltaBodies).digest('hex'), parts: 1 } },
  };
  pack.entry({ name: 'trailer.json' }, Buffer.from(JSON.stringify(trailer)));
  pack.finalize();
  await done;
  return zlib.gzipSync(Buffer.concat(chunks));
}

/** Rewrites an entry's tar header to declare 8 GiB (the checksum made right): a lie about size. */
function hugeSize(gz: Buffer, name: string): Buffer {
  const t = zlib.gunzipSync(gz);
  for (let off = 0; off + 512 <= t.length; off += 512) {
    const h = t.subarray(off, off + 512);
    if (h.subarray(0, name.length).toString('latin1') !== name || h[name.length] !== 0) continue;
    h.write('77777777777\0', 124, 'latin1');
    h.fill(0x20, 148, 156);
    let sum = 0;
    for (const b of h) sum += b;
    h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
    return zlib.gzipSync(t);
  }
  throw new Error(`no entry ${name}`);
}

const delta = Buffer.from('btrfs-stream\0\x01\0\0\0'); // a header only: never reached anyway
/** Names the hostile send streams try to make outside (unique to this run). */
const OUT = `sbk-hostile-stream-${process.pid}`;

describe.skipIf(mode === 'skip')('hostile archives are refused, nothing written outside', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 200 });
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  const cases: [string, () => Promise<Buffer>][] = [
    ['an absolute path', () => craft([{ name: '/tmp/sbk-hostile-abs', body: Buffer.from('x') }])],
    ['a .. path', () => craft([{ name: '../sbk-hostile-up', body: Buffer.from('x') }])],
    ['meta/../../ escaping', () => craft([{ name: 'meta/../../sbk-hostile-meta', body: Buffer.from('x') }])],
    ['a symlink in meta', () => craft([{ name: 'meta/link', type: 'symlink', linkname: '/etc' }, { name: 'meta/link/passwd', body: Buffer.from('x') }])],
    ['a hard link', () => craft([{ name: 'meta/config', type: 'link', linkname: '/etc/shadow' }])],
    ['a device node', () => craft([{ name: 'meta/dev', type: 'character-device' }])],
    ['a duplicate name', () => craft([{ name: 'meta/config', body: Buffer.from('a') }, { name: 'meta/config', body: Buffer.from('b') }, { name: 'rootfs.delta', body: delta }])],
    ['an unknown name', () => craft([{ name: 'meta/config', body: Buffer.from('a') }, { name: 'evil.sh', body: Buffer.from('rm -rf /') }])],
    ['a huge declared size', async () => hugeSize(await craft([{ name: 'meta/config', body: Buffer.from('a') }, { name: 'rootfs.delta', body: delta }]), 'meta/config')],
    ['a container name with a slash', () => craft([{ name: 'rootfs.delta', body: delta }], goodManifest({ container: '../../etc', name: '../../etc_1700000000_Full' }))],
    ['a volume named ../x', () => craft([{ name: '../x.delta', body: delta }], goodManifest({ volumes: [{ name: '../x', mount: '/', uuid: 'u', parentUuid: null }] }))],
    ['a delta of a volume the manifest does not list', () => craft([{ name: 'meta/config', body: Buffer.from('a') }, { name: 'home.delta', body: delta }])],
    // Send streams with valid CRCs whose commands would make btrfs receive reach outside the
    // subvolume it makes (it resolves '..' and symlinks as the kernel does).
    ...(
      [
        ['a send stream with a .. path', stream(cmd.subvol('rootfs'), cmd.mkdir(`${'../'.repeat(30)}tmp/${OUT}-up`))],
        ['a send stream with an absolute path', stream(cmd.subvol('rootfs'), cmd.mkdir(`/tmp/${OUT}-abs`))],
        ['a send stream through its own symlink', stream(cmd.subvol('rootfs'), cmd.symlink('l', '/tmp'), cmd.mkdir(`l/${OUT}-link`))],
        ['a send stream naming its subvolume ../x', stream(cmd.subvol(`../${OUT}-subvol`))],
      ] as const
    ).map(([what, s]): [string, () => Promise<Buffer>] => [what, () => craft([{ name: 'meta/config', body: Buffer.from('a') }, { name: 'rootfs.delta', body: s }])]),
  ];

  it.each(cases)('%s', async (_what, make) => {
    const file = path.join(sb.dir, 'hostile.tar.gz');
    await writeFile(file, await make());
    const before = (await readdir(sb.dir)).sort();
    const r = await sh(`sbk-unpack --as victim ${file}`, sb);
    expect(r.exitCode).not.toBe(0);
    expect([3, 4, 5]).toContain(r.exitCode);
    expect(r.stderr).not.toMatch(/\n\s+at /); // a clean error, no stack
    expect(await readdir(sb.dir).then((n) => n.sort())).toEqual(before);
    expect((await readdir(sb.lxcDir)).filter((n) => !n.startsWith('.sbk-locks'))).toEqual([]);
    for (const p of ['/tmp/sbk-hostile-abs', path.join(sb.lxcDir, '../sbk-hostile-up'), path.join(sb.mnt, 'sbk-hostile-meta')])
      expect(await stat(p).then(() => true, () => false)).toBe(false);
    const escaped = [...(await readdir('/tmp')), ...(await readdir(sb.mnt)), ...(await readdir(sb.lxcDir))].filter((n) => n.startsWith(OUT));
    expect(escaped).toEqual([]);
    const v = await sh(`sbk-unpack --verify ${file}`, sb);
    expect([3, 4, 5]).toContain(v.exitCode);
  });

  it('makes no directory for a nested subvolume through a symlink of the received volume', async () => {
    const file = path.join(sb.dir, 'nested.tar.gz');
    const s = stream(cmd.subvol('rootfs'), cmd.symlink('l', '/tmp'));
    const manifest = goodManifest({ nestedSubvolumes: [{ volume: 'rootfs', path: `l/${OUT}-nested`, mode: 0o755, uid: 0, gid: 0 }] });
    await writeFile(file, await craft([{ name: 'meta/config', body: Buffer.from('a') }, { name: 'rootfs.delta', body: s }], manifest));
    const r = await sh(`sbk-unpack --as nested ${file}`, sb);
    try {
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/l is not a directory: no empty directory made there/);
      expect(await stat(`/tmp/${OUT}-nested`).then(() => true, () => false)).toBe(false);
    } finally {
      await sh(`btrfs subvolume delete '${path.join(sb.lxcDir, 'nested/rootfs')}' && rm -rf '${path.join(sb.lxcDir, 'nested')}'`, sb);
    }
  });

  it('restores nothing under an invalid --as name', async () => {
    for (const name of ['../x', 'a/b', 'has space', '.hidden', '']) {
      const r = await sh(`sbk-unpack --as '${name}' /dev/null`, sb);
      expect(r.exitCode).toBe(2);
    }
  });
});
