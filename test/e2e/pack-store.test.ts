// sbk-pack --store DIR run as a binary on synthetic archives (no BTRFS, no root): the gzip stream
// of `sbk-pack -o -` is stored byte for byte, one file per member, each with a receipt; a cut,
// corrupt or foreign stream stores nothing under a final name and leaves no temporary file.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import zlib from 'node:zlib';
import { execa } from 'execa';
import { checkReceipt, type Receipt } from '../../src/formats/receipt.js';
import { synthManifest, synthTar } from '../fixtures/archives/synthetic.js';
import { makeMemberChain as makeChain, bigMember, peakRss } from '../helpers/stores.js';
import { BIN } from '../helpers/sandbox.js';
import { until } from '../helpers/wait.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'sbk-receipts-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function store(input: Buffer, extra: string[] = []) {
  return execa(BIN('sbk-pack'), ['--store', dir, ...extra], { input, reject: false, encoding: 'utf8' });
}

async function ls(): Promise<string[]> {
  return (await readdir(dir)).filter((n) => n !== '.locks').sort();
}

describe('sbk-pack --store DIR', () => {
  it('stores each gzip member byte for byte under its name, with its sidecar, and prints a receipt for each', async () => {
    const c = await makeChain();
    const r = await store(Buffer.concat(c.members));
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    const receipts = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Receipt);
    expect(receipts.map((x) => x.name)).toEqual(c.manifests.map((m) => m.name));
    for (const [i, rc] of receipts.entries()) {
      const m = c.manifests[i]!;
      const file = path.join(dir, `${m.name}.tar.gz`);
      const bytes = await readFile(file);
      expect(bytes.equals(c.members[i]!)).toBe(true);
      expect(rc).toMatchObject({
        sbk: 'receipt',
        format: 1,
        container: 'c1',
        time: m.time,
        full: m.full,
        archive: `${m.name}.tar.gz`,
        size: bytes.length,
        sha256: sha(bytes),
        host: os.hostname(),
        path: file,
        volumes: m.volumes.map((v) => ({ name: v.name, uuid: v.uuid })),
      });
      expect(() => checkReceipt(rc, 1)).not.toThrow();
    }
    expect(await readFile(path.join(dir, 'c1_1700000100_changelog.txt'), 'utf8')).toBe('modified /etc/hostname\n');
    expect(await ls()).toEqual(['c1_1700000000_Full.tar.gz', 'c1_1700000100.tar.gz', 'c1_1700000100_changelog.txt', 'c1_1700000200.tar.gz']);
    // What it stored plans as a chain.
    const v = await execa(BIN('sbk-plan'), ['c1', '--dir', dir], { reject: false });
    expect(v.exitCode, v.stderr).toBe(0);
    expect(v.stdout.split('\n')).toEqual(c.manifests.map((m) => path.join(dir, `${m.name}.tar.gz`)));
  });

  it('a stream cut anywhere stores the archives before the cut, nothing else, and fails with exit 4', async () => {
    const c = await makeChain();
    const all = Buffer.concat(c.members);
    const ends = c.members.map((_, i) => c.members.slice(0, i + 1).reduce((n, b) => n + b.length, 0));
    // In the first header, inside deflate data, in a gzip trailer, just after a member, in the last.
    const cuts = [5, 11, 40_000, ends[0]! - 4, ends[0]! + 3, ends[1]! - 1, ends[2]! - 8, ends[2]! - 1];
    for (const n of cuts) {
      await rm(dir, { recursive: true, force: true });
      const r = await store(all.subarray(0, n));
      expect(r.exitCode, `cut at ${n}: ${r.stderr}`).toBe(4);
      expect(r.stderr).toMatch(/^sbk-pack: .*cut short/);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
      const whole = ends.filter((e) => e <= n).length;
      const names = (await readdir(dir).catch(() => [] as string[])).filter((x) => x !== '.locks');
      expect(names.filter((x) => x.startsWith('.')), 'no temporary file is left').toEqual([]);
      expect(names.filter((x) => x.endsWith('.tar.gz')).sort()).toEqual(c.manifests.slice(0, whole).map((m) => `${m.name}.tar.gz`));
      expect(r.stdout.trim().split('\n').filter(Boolean)).toHaveLength(whole);
    }
  });

  it('a flipped byte anywhere in a member fails with exit 4 and stores nothing of that member', async () => {
    const c = await makeChain();
    const one = c.members[0]!;
    for (const at of [200, Math.floor(one.length / 2), one.length - 6]) {
      await rm(dir, { recursive: true, force: true });
      const bad = Buffer.from(one);
      bad[at] ^= 0x40;
      const r = await store(bad);
      expect(r.exitCode, `flip at ${at}: ${r.stderr}`).toBe(4);
      expect(r.stdout).toBe('');
      expect((await readdir(dir)).filter((x) => x !== '.locks')).toEqual([]);
    }
  });

  it('refuses trailing garbage after the last archive (exit 4) but keeps what was whole', async () => {
    const c = await makeChain();
    const r = await store(Buffer.concat([c.members[0]!, Buffer.from('garbage!!!\n')]));
    expect(r.exitCode).toBe(4);
    expect(r.stderr).toMatch(/after archive 1 that are not a gzip or zstd member/);
    expect(await ls()).toEqual(['c1_1700000000_Full.tar.gz']);
  });

  it('stores zstd frames and gzip members mixed, each byte for byte under its own suffix; a cut or flipped frame stores nothing from it (4)', async () => {
    const c = await makeChain();
    // The Full and the last incremental as zstd frames (what sbk-pack --compress zstd -o - writes).
    const zstd = (b: Buffer) => execa('zstd', ['-q', '-3', '--check', '-c'], { input: b, encoding: 'buffer' }).then((r) => r.stdout as unknown as Buffer);
    const plain = c.members.map((m) => zlib.gunzipSync(m));
    const members = [await zstd(plain[0]!), c.members[1]!, await zstd(plain[2]!)];
    const r = await store(Buffer.concat(members));
    expect(r.exitCode, r.stderr).toBe(0);
    const names = ['c1_1700000000_Full.tar.zst', 'c1_1700000100.tar.gz', 'c1_1700000200.tar.zst'];
    expect(r.stdout.trim().split('\n').map((l) => (JSON.parse(l) as Receipt).archive)).toEqual(names);
    for (const [i, n] of names.entries()) expect((await readFile(path.join(dir, n))).equals(members[i]!)).toBe(true);
    const plan = await execa(BIN('sbk-plan'), ['c1', '--dir', dir], { reject: false });
    expect(plan.stdout.split('\n')).toEqual(names.map((n) => path.join(dir, n)));
    // The same backup again, as gzip: refused, it is there as zstd.
    const again = await store(c.members[0]!);
    expect(again.exitCode).toBe(6);
    expect(again.stderr).toMatch(/c1_1700000000_Full\.tar\.zst already exists/);

    for (const [what, bad] of [
      ['cut', members[0]!.subarray(0, members[0]!.length - 3)],
      ['flipped', (() => { const b = Buffer.from(members[0]!); b[Math.floor(b.length / 2)]! ^= 0x40; return b; })()],
    ] as const) {
      await rm(dir, { recursive: true, force: true });
      const e = await store(bad);
      expect(e.exitCode, `${what}: ${e.stderr}`).toBe(4);
      expect(e.stderr.trim().split('\n')).toHaveLength(1);
      expect(e.stdout).toBe('');
      expect((await readdir(dir).catch(() => [] as string[])).filter((x) => x !== '.locks')).toEqual([]);
    }
  });

  it('refuses a member that holds two archives', async () => {
    const f = synthManifest({ container: 'c1', time: 1_700_000_000, full: true });
    const g = synthManifest({ container: 'c1', time: 1_700_000_500, full: true });
    const r = await store(zlib.gzipSync(Buffer.concat([await synthTar(f), await synthTar(g)])));
    expect(r.exitCode).toBe(4);
    expect(r.stderr).toMatch(/holds a second archive/);
    expect(await ls()).toEqual([]);
  });

  it('never overwrites an archive (exit 6)', async () => {
    const c = await makeChain();
    expect((await store(c.members[0]!)).exitCode).toBe(0);
    const r = await store(c.members[0]!);
    expect(r.exitCode).toBe(6);
    expect(r.stderr).toMatch(/already exists; not overwriting it/);
    expect(r.stdout).toBe('');
  });

  it('also takes the tar stream of sbk-send (compressing it) and prints receipts', async () => {
    const f = synthManifest({ container: 'web_2', time: 1_700_000_000, full: true });
    const r = await store(await synthTar(f), ['--level', '1']);
    expect(r.exitCode, r.stderr).toBe(0);
    const rc = JSON.parse(r.stdout) as Receipt;
    const bytes = await readFile(path.join(dir, 'web_2_1700000000_Full.tar.gz'));
    expect(rc).toMatchObject({ name: 'web_2_1700000000_Full', size: bytes.length, sha256: sha(bytes) });
  });

  it.each([
    ['NDJSON records', Buffer.from('{"sbk":"backup"}\n'), /got NDJSON records .*sbk-send first/],
    ['text', Buffer.from('hello\n'), /expected sbk archives .* got text/],
    ['nothing', Buffer.alloc(0), /no input/],
    ['gzip that is not an archive', zlib.gzipSync('hello'), /not a tar stream|not an sbk archive/],
  ])('refuses %s with exit 3', async (_what, input, msg) => {
    const r = await store(input);
    expect(r.exitCode).toBe(3);
    expect(r.stderr).toMatch(msg);
    expect(await ls()).toEqual([]);
  });

  it('-o and --store do not go together', async () => {
    const r = await execa(BIN('sbk-pack'), ['--store', dir, '-o', '-'], { input: '', reject: false });
    expect(r.exitCode).toBe(2);
  });

  it('removes what killed transfers left (process gone, an hour old), and nothing else', async () => {
    const c = await makeChain();
    const stale = path.join(dir, '.incoming.tar.gz.tmp-999999-0');
    const fresh = path.join(dir, '.incoming.tar.gz.tmp-999999-1');
    const mine = path.join(dir, `.incoming.tar.gz.tmp-${process.pid}-0`);
    for (const f of [stale, fresh, mine]) await writeFile(f, 'partial');
    const old = new Date(Date.now() - 2 * 3600_000);
    await utimes(stale, old, old);
    await utimes(mine, old, old);
    const r = await store(c.members[0]!);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/removing \.incoming\.tar\.gz\.tmp-999999-0, left by a transfer that did not finish/);
    expect(existsSync(stale)).toBe(false);
    expect(existsSync(fresh)).toBe(true);
    expect(existsSync(mine)).toBe(true);
  });

  it('SIGTERM while waiting for input: exit 143, no temporary file, nothing stored', async () => {
    const c = await makeChain();
    const child = execa(BIN('sbk-pack'), ['--store', dir], { reject: false, stdin: 'pipe' });
    child.stdin!.write(c.members[0]!.subarray(0, 50_000));
    await until(async () => (await readdir(dir).catch(() => [] as string[])).some((n) => n.startsWith('.incoming')), 'the incoming file', 5000).catch(() => {});
    child.kill('SIGTERM');
    const r = await child;
    expect(r.exitCode).toBe(143);
    expect(await ls()).toEqual([]);
  });

  it('reads large members from small writes (boundaries in every position)', async () => {
    const c = await makeChain();
    await writeFile(path.join(dir, 'in.gz'), Buffer.concat(c.members));
    // dd with a tiny block size: members end at arbitrary read boundaries.
    const out = path.join(dir, 'out');
    const r = await execa('bash', ['-o', 'pipefail', '-c', `dd if=${dir}/in.gz bs=997 status=none | ${BIN('sbk-pack')} --store ${out}`], { reject: false });
    expect(r.exitCode, r.stderr).toBe(0);
    for (const [i, m] of c.manifests.entries())
      expect((await readFile(path.join(out, `${m.name}.tar.gz`))).equals(c.members[i]!)).toBe(true);
  });
});

describe('sbk-pack --store DIR memory', () => {
  it('stays under 150 MiB for an archive of 160 MiB (the copy never keeps what it wrote)', async () => {
    const dir2 = await mkdtemp(path.join(os.tmpdir(), 'sbk-store-mem-'));
    try {
      const big = await bigMember('mem', 160);
      const r = await peakRss(BIN('sbk-pack'), ['--store', dir2], big);
      expect(r.exitCode, r.stderr).toBe(0);
      expect((await readFile(path.join(dir2, 'mem_1700000000_Full.tar.gz'))).equals(big)).toBe(true);
      expect(r.rssMiB).toBeLessThan(150);
    } finally {
      await rm(dir2, { recursive: true, force: true });
    }
  });
});
