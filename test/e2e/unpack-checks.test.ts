// sbk-unpack run as a binary, without BTRFS: --verify on the committed fixtures and damaged
// copies of them, and the checks on input made before any receive (kinds of stdin, order of
// archives, names).
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, rm, writeFile, readFile, readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { execa } from 'execa';
import { BIN, ROOT } from '../helpers/sandbox.js';
import { synthManifest, synthArchive } from '../fixtures/archives/synthetic.js';
import { cmd, stream } from '../helpers/sendstream-builder.js';

const FIXTURES = path.join(ROOT, 'test/fixtures/archives');
const fixture = async (re: RegExp) => {
  const f = (await readdir(FIXTURES)).find((n) => re.test(n));
  if (!f) throw new Error(`fixture ${re} missing: run test/fixtures/archives/make.sh`);
  return path.join(FIXTURES, f);
};

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'sbk-restore-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const unpack = (args: string[], input?: Buffer | string, env: Record<string, string> = {}) =>
  execa(BIN('sbk-unpack'), args, {
    reject: false,
    input,
    stdin: input === undefined ? 'ignore' : undefined,
    env: { SBK_LXC_DIR: path.join(dir, 'lxc'), ...env },
  });

/** The entries of an uncompressed tar, in order. */
async function tarEntries(bytes: Buffer): Promise<{ header: tar.Header; body: Buffer }[]> {
  const out: { header: tar.Header; body: Buffer }[] = [];
  const ex = tar.extract();
  Readable.from([bytes]).pipe(ex);
  for await (const e of ex) {
    const chunks: Buffer[] = [];
    for await (const c of e as AsyncIterable<Buffer>) chunks.push(c);
    out.push({ header: e.header, body: Buffer.concat(chunks) });
  }
  return out;
}

/** Offset of an entry's data in an uncompressed tar (ustar headers, 512-byte blocks). */
function entryDataOffset(t: Buffer, name: string): number {
  let off = 0;
  while (off + 512 <= t.length) {
    const n = t.subarray(off, off + 100).toString('latin1').replace(/\0.*$/s, '');
    const size = parseInt(t.subarray(off + 124, off + 136).toString('latin1').replace(/\0.*$/s, '').trim() || '0', 8);
    if (n === name) return off + 512;
    off += 512 + Math.ceil(size / 512) * 512;
  }
  throw new Error(`no entry ${name}`);
}

describe('sbk-unpack --verify', () => {
  it('accepts the fixtures, by path and as one concatenated stream, and warns about the old layout', async () => {
    const full = await fixture(/^fx_\d+_Full\.tar\.gz$/);
    const incr = await fixture(/^fx_\d+\.tar\.gz$/);
    const old = await fixture(/^old_/);
    const r = await unpack(['--verify', full, incr, old]);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/fx_\d+_Full: ok \(2 volumes, [\d.]+ KiB of send streams\)/);
    expect(r.stderr).toMatch(/fx_\d+: ok \(2 volumes/);
    expect(r.stderr).toContain('old_1477297700_Full is an archive of the original Subutai tool: it carries no checksums');
    const cat = Buffer.concat([await readFile(full), await readFile(incr)]);
    const s = await unpack(['--verify'], cat);
    expect(s.exitCode, s.stderr).toBe(0);
    expect(s.stderr.match(/: ok /g)).toHaveLength(2);
    // A list of paths on stdin (what sbk-plan prints) works as well.
    const list = await unpack(['--verify', '-q'], `${full}\n${incr}\n`);
    expect(list.exitCode, list.stderr).toBe(0);
    expect(list.stderr).toBe('');
  });

  it('checks that each incremental applies to the tree its parent leaves (exit 4, naming the command), when the parent is checked first', async () => {
    const [FULL, INCR] = [Buffer.alloc(16, 1), Buffer.alloc(16, 2)];
    const f = synthManifest({ container: 'c1', time: 1_700_000_000, full: true, volumes: ['rootfs'] });
    const i = synthManifest({ container: 'c1', time: 1_700_000_100, full: false, parent: f, volumes: ['rootfs'] });
    const store = async (m: typeof f, delta: Buffer) => {
      const file = path.join(dir, `${m.name}.tar.gz`);
      await writeFile(file, await synthArchive(m, { deltas: { rootfs: delta } }));
      return file;
    };
    const full = await store(f, stream(cmd.subvol('rootfs', FULL), cmd.mkdir('etc'), cmd.mkfile('etc/hostname')));
    const good = await store(i, stream(cmd.snapshot('rootfs', INCR, FULL), cmd.rename('etc/hostname', 'etc/hostname.old')));
    expect((await unpack(['--verify', full, good])).exitCode).toBe(0);
    const bad = await store(i, stream(cmd.snapshot('rootfs', INCR, FULL), cmd.rename('etc/motd', 'etc/motd.old')));
    const r = await unpack(['--verify', full, bad]);
    expect(r.exitCode).toBe(4);
    expect(r.stderr).toMatch(/c1_1700000100: rootfs\.delta: corrupt send stream at byte offset \d+: rename does not apply to the tree its parent leaves: 'etc\/motd' does not exist/);
    // Alone, its parent unknown, it is checked as before (checksums and paths).
    expect((await unpack(['--verify', bad])).exitCode).toBe(0);
  });

  it('names the delta whose send stream has a flipped byte (exit 4), also in the old layout', async () => {
    for (const re of [/^fx_\d+_Full\.tar\.gz$/, /^old_/]) {
      const src = await fixture(re);
      const t = zlib.gunzipSync(await readFile(src));
      t[entryDataOffset(t, 'rootfs.delta') + 200] ^= 0x01;
      const bad = path.join(dir, path.basename(src));
      await writeFile(bad, zlib.gzipSync(t));
      const r = await unpack(['--verify', bad]);
      expect(r.exitCode).toBe(4);
      expect(r.stderr).toMatch(/rootfs\.delta: corrupt send stream at byte offset \d+: .*crc/i);
      expect(r.stderr.trim().split('\n').filter((l) => !/warning/.test(l))).toHaveLength(1);
    }
  });

  it('finds a send stream without its END even when every sha256 matches', async () => {
    const src = await fixture(/^fx_\d+_Full\.tar\.gz$/);
    const entries = await tarEntries(zlib.gunzipSync(await readFile(src)));
    const rootfs = entries.find((e) => e.header.name === 'rootfs.delta')!.body;
    const m = synthManifest({ container: 'fx', time: 1000, full: true, volumes: ['rootfs'] });
    // END is a bare 10-byte command header: cut it, then frame the rest with a valid trailer.
    const cut = path.join(dir, 'fx_1000_Full.tar.gz');
    await writeFile(cut, await synthArchive(m, { deltas: { rootfs: rootfs.subarray(0, rootfs.length - 10) } }));
    const r = await unpack(['--verify', cut]);
    expect(r.exitCode).toBe(4);
    expect(r.stderr).toMatch(/fx_1000_Full: rootfs\.delta: .*END/);
  });

  it('names the part that holds the bad command when a stream spans parts', async () => {
    const src = await fixture(/^fx_\d+_Full\.tar\.gz$/);
    const entries = await tarEntries(zlib.gunzipSync(await readFile(src)));
    const rootfs = entries.find((e) => e.header.name === 'rootfs.delta')!.body;
    expect(rootfs.length).toBeGreaterThan(2 * 4096);
    const m = synthManifest({ container: 'fx', time: 1000, full: true, volumes: ['rootfs'] });
    const t = zlib.gunzipSync(await synthArchive(m, { deltas: { rootfs }, partSize: 4096 }));
    const good = path.join(dir, 'fx_1000_Full.tar.gz');
    await writeFile(good, zlib.gzipSync(t));
    expect((await unpack(['--verify', good])).exitCode).toBe(0);
    t[entryDataOffset(t, 'rootfs.delta.000002') + 100] ^= 0x10;
    await writeFile(good, zlib.gzipSync(t));
    const r = await unpack(['--verify', good]);
    expect(r.exitCode).toBe(4);
    expect(r.stderr).toMatch(/fx_1000_Full: rootfs\.delta\.000002: corrupt send stream at byte offset (\d+)/);
    // The offset is in the whole volume stream, not in the part.
    expect(Number(/byte offset (\d+)/.exec(r.stderr)![1])).toBeLessThan(rootfs.length);
  });

  it('reports a truncated archive and a tar without its trailer (exit 4)', async () => {
    const src = await readFile(await fixture(/^fx_\d+_Full\.tar\.gz$/));
    const half = path.join(dir, 'half.tar.gz');
    await writeFile(half, src.subarray(0, Math.floor(src.length / 2)));
    const r1 = await unpack(['--verify', half]);
    expect(r1.exitCode).toBe(4);
    expect(r1.stderr).toMatch(/half\.tar\.gz: the gzip data is corrupt/);

    const t = zlib.gunzipSync(src);
    const noTrailer = path.join(dir, 'notrailer.tar.gz');
    // Cut the tar right before the trailer's header: a well-formed tar that just ends.
    await writeFile(noTrailer, zlib.gzipSync(t.subarray(0, entryDataOffset(t, 'trailer.json') - 512)));
    const r2 = await unpack(['--verify', noTrailer]);
    expect(r2.exitCode, r2.stderr).toBe(4);
    expect(r2.stderr).toMatch(/archive fx_\d+_Full is incomplete: the stream ends after 'home\.delta' without a trailer/);
  });

  it('checks every file and sums up when several fail', async () => {
    const good = await fixture(/^fx_\d+_Full\.tar\.gz$/);
    const junk = path.join(dir, 'junk.tar.gz');
    await writeFile(junk, Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4]));
    const r = await unpack(['--verify', junk, good, junk]);
    expect(r.exitCode).toBe(4);
    expect(r.stderr).toMatch(/fx_\d+_Full: ok/);
    expect(r.stderr).toContain('sbk-unpack: 2 of 3 inputs failed the check');
  });
});

describe('sbk-unpack input checks (before any receive)', () => {
  it('tells stdin kinds apart and refuses what is not archives or paths', async () => {
    const empty = await unpack([], '');
    expect(empty.exitCode).toBe(3);
    expect(empty.stderr).toContain('stdin is empty');
    const nd = await unpack([], '{"sbk":"backup"}\n');
    expect(nd.exitCode).toBe(3);
    expect(nd.stderr).toContain('NDJSON');
    const list = await unpack([], `${dir}/nope_1_Full.tar.gz\n`);
    expect(list.exitCode).toBe(5);
    expect(list.stderr.trim()).toBe(`sbk-unpack: ${dir}/nope_1_Full.tar.gz: no such archive`);
  });

  it('refuses bad options and names', async () => {
    expect((await unpack(['--verify', '--as', 'x', 'a'])).exitCode).toBe(2);
    const bad = await unpack(['--as', 'a/b', 'x']);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toContain("--as name 'a/b' contains '/'");
  });

  it('refuses an incremental first, a skipped link and a foreign container, naming them', async () => {
    const f = synthManifest({ container: 'c1', time: 100, full: true });
    const i1 = synthManifest({ container: 'c1', time: 200, full: false, parent: f });
    const i2 = synthManifest({ container: 'c1', time: 300, full: false, parent: i1 });
    const other = synthManifest({ container: 'c2', time: 250, full: false, parent: synthManifest({ container: 'c2', time: 90, full: true }) });
    const p: Record<string, string> = {};
    for (const m of [f, i1, i2, other]) {
      p[m.name] = path.join(dir, `${m.name}.tar.gz`);
      await writeFile(p[m.name]!, await synthArchive(m));
    }
    const first = await unpack([p[i1.name]!, p[i2.name]!]);
    expect(first.exitCode).toBe(3);
    expect(first.stderr.trim()).toBe('sbk-unpack: c1_200 is an incremental backup: a restore starts at its Full (sbk-plan c1 | sbk-unpack)');
    const skip = await unpack([p[f.name]!, p[i2.name]!]);
    expect(skip.exitCode).toBe(3);
    expect(skip.stderr).toContain('c1_300 cannot follow c1_100_Full: the parent of c1_300 is c1_200, not c1_100_Full');
    const foreign = await unpack([p[f.name]!, p[other.name]!]);
    expect(foreign.exitCode).toBe(3);
    expect(foreign.stderr).toContain('c2_250 is a backup of c2, not of c1');
    // Nothing was made: the LXC dir does not even exist.
    await expect(readdir(path.join(dir, 'lxc'))).rejects.toThrow();
  });

  it('an old-layout archive on stdin needs --as (it carries no name)', async () => {
    const old = await fixture(/^old_/);
    const r = await unpack([], await readFile(old));
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toContain('carries no container name; give one with --as NAME');
  });
});
