// Retention on real BTRFS: `sbk-plan --prune --delete` after which every remaining backup still
// restores bit-exact; `sbk-snap --keep-snapshots` applied when sbk-pack confirms a set, never
// touching a set whose pipeline is still running nor the parent it is sent against;
// `sbk-snap --max-chain` in the local pipeline.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, randomish, sh, treeDiff, ROOT, type Sandbox } from '../helpers/sandbox.js';
import { lockTaken, until } from '../helpers/wait.js';

const mode = e2eMode();

async function ls(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).sort();
}

describe.skipIf(mode === 'skip')('retention on loopback BTRFS', () => {
  let sb: Sandbox;
  const sets = async (c: string) => (await ls(path.join(sb.backupDir, c))).filter((n) => !n.startsWith('.'));
  const confirmed = async (c: string) =>
    (await sets(c)).filter((s) => existsSync(path.join(sb.backupDir, c, s, '.sbk-confirmed')));
  const change = (c: string, i: number) => writeFile(path.join(sb.lxcDir, c, 'rootfs/data'), randomish(64 * 1024 + i, i));

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 384 });
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  it('--prune --delete removes what the policy lets go, newest first, and every remaining backup restores', async () => {
    await makeContainer(sb, 'p1', { volumes: ['rootfs', 'home'], content: false });
    // F0 I1 I2 F3 I4 I5, all in one month.
    const names: string[] = [];
    for (let i = 0; i < 6; i++) {
      await change('p1', i);
      // Every restore is compared with its snapshot set below: keep them all (the default keeps 2).
      const r = await sh(`sbk-snap --keep-snapshots 100 ${i === 3 ? '--full ' : ''}p1 | sbk-changelog | sbk-send | sbk-pack`, sb);
      expect(r.exitCode, r.stderr).toBe(0);
      names.push(path.basename(r.stdout.trim(), '.tar.gz'));
    }
    expect(names.map((n) => n.endsWith('_Full'))).toEqual([true, false, false, true, false, false]);
    const file = (i: number) => path.join(sb.backupDir, `${names[i]}.tar.gz`);
    // Every backup's changelog sidecar is named after its archive (<archive base>_changelog.txt):
    // a first Full's lists every path as added, a later Full's (--full) and an incremental's the
    // changes since the backup before; so grep over them names every backup that touched a path.
    const sidecar = (i: number) => path.join(sb.backupDir, `${names[i]}_changelog.txt`);
    expect((await ls(sb.backupDir)).filter((n) => n.endsWith('_changelog.txt'))).toEqual(names.map((n) => `${n}_changelog.txt`).sort());
    const lines = async (i: number) => (await readFile(sidecar(i), 'utf8')).split('\n').filter(Boolean);
    const first = await lines(0);
    expect(first.slice(0, 2)).toEqual(['added /', 'added /data']);
    expect(first.every((l) => l.startsWith('added /'))).toBe(true);
    expect(first).toContain('added /home/');
    for (const i of [1, 2, 3, 4, 5]) expect(await lines(i), names[i]).toEqual(['modified /data']);
    const touched = await execa('grep', ['-lE', '^(added|modified|deleted) /data$', ...names.map((_, i) => sidecar(i))]);
    expect(touched.stdout.split('\n')).toEqual(names.map((_, i) => sidecar(i)));
    // The changelog travels inside the archive as well.
    expect((await execa('tar', ['xzOf', file(0), 'changelog.txt'])).stdout.split('\n')).toEqual(first);

    // The newest (with its chain) and, as the oldest backup of a month with count left, F0.
    const dry = await sh('sbk-plan p1 --prune --keep-last 1 --keep-monthly 5', sb);
    expect(dry.exitCode, dry.stderr).toBe(0);
    expect(dry.stdout.split('\n')).toEqual([sidecar(2), file(2), sidecar(1), file(1)]);
    expect(existsSync(file(1))).toBe(true); // a dry run removes nothing

    // Refused while another run holds the container's lock (exit 7).
    const lock = path.join(sb.backupDir, '.locks', 'p1.lock');
    // -F: sleep itself holds the lock, so killing it releases the lock.
    const holder = execa('flock', ['-F', '-x', lock, 'sleep', '20'], { reject: false });
    try {
      await until(() => lockTaken(lock), 'the holder to take the lock');
      const locked = await sh('sbk-plan p1 --prune --keep-last 1 --delete', sb);
      expect(locked.exitCode).toBe(7);
      expect(locked.stderr).toMatch(/is locked by/);
    } finally {
      holder.kill();
      await holder;
    }

    const del = await sh('sbk-plan p1 --prune --keep-last 1 --keep-monthly 5 --delete', sb);
    expect(del.exitCode, del.stderr).toBe(0);
    expect(del.stdout.split('\n')).toEqual([sidecar(2), file(2), sidecar(1), file(1)]);
    expect(del.stderr).toMatch(/p1: removed 2 backups, kept 4/);
    for (const i of [1, 2]) expect(existsSync(file(i)) || existsSync(sidecar(i))).toBe(false);

    // Every remaining backup restores, identical to its snapshots.
    for (const i of [0, 3, 4, 5]) {
      const t = /_(\d+)/.exec(names[i]!)![1];
      const r = await sh(`sbk-plan p1 --at ${t} | sbk-unpack --as p1r${i}`, sb);
      expect(r.exitCode, r.stderr).toBe(0);
      const set = path.join(sb.backupDir, 'p1', names[i]!.replace(/^p1_/, ''));
      for (const v of ['rootfs', 'home']) expect(await treeDiff(path.join(set, v), path.join(sb.lxcDir, `p1r${i}`, v))).toEqual([]);
    }
    const list = await sh('sbk-plan p1 --list --json', sb);
    expect(list.stdout.trim().split('\n').map((l) => JSON.parse(l).chain)).toEqual(['complete', 'complete', 'complete', 'complete']);

    // Then the old chain goes too; the newest chain stays whole. F0's sidecar under the name
    // earlier versions gave a Full's (<c>_<time>_changelog.txt) goes with it.
    const oldName = path.join(sb.backupDir, `p1_${/_(\d+)/.exec(names[0]!)![1]}_changelog.txt`);
    await rename(sidecar(0), oldName);
    const more = await sh('sbk-plan p1 --prune --keep-last 1 --delete', sb);
    expect(more.exitCode, more.stderr).toBe(0);
    expect(more.stdout.split('\n')).toEqual([oldName, file(0)]);
    expect(existsSync(oldName)).toBe(false);
    const plan = await sh('sbk-plan p1', sb);
    expect(plan.stdout.split('\n')).toEqual([file(3), file(4), file(5)]);
  });

  it('--max-chain in the local pipeline: after N incrementals the next backup is a Full', async () => {
    await makeContainer(sb, 'm1', { volumes: ['rootfs'], content: false });
    const kinds: string[] = [];
    for (let i = 0; i < 5; i++) {
      await change('m1', i);
      const r = await sh('sbk-snap --max-chain 1 m1 | sbk-send | sbk-pack', sb);
      expect(r.exitCode, r.stderr).toBe(0);
      kinds.push(r.stdout.trim().endsWith('_Full.tar.gz') ? 'F' : 'I');
    }
    expect(kinds).toEqual(['F', 'I', 'F', 'I', 'F']);
    // --max-chain 0: every backup a Full; with --incremental it makes no sense.
    const zero = await sh('sbk-snap --max-chain 0 m1 | sbk-send | sbk-pack', sb);
    expect(zero.stdout.trim()).toMatch(/_Full\.tar\.gz$/);
    const bad = await sh('sbk-snap --max-chain 2 --incremental m1', sb);
    expect(bad.exitCode).toBe(2);
  });

  it('--keep-snapshots N (default 2): applied when sbk-pack confirms', async () => {
    await makeContainer(sb, 'k1', { volumes: ['rootfs'], content: false });
    for (let i = 0; i < 3; i++) {
      await change('k1', i);
      expect((await sh('sbk-snap k1 | sbk-send | sbk-pack', sb)).exitCode).toBe(0);
    }
    expect(await sets('k1')).toHaveLength(2); // the default
    await change('k1', 30);
    expect((await sh('sbk-snap --keep-snapshots 10 k1 | sbk-send | sbk-pack', sb)).exitCode).toBe(0);
    expect(await sets('k1')).toHaveLength(3);
    for (let i = 3; i < 5; i++) {
      await change('k1', i);
      const r = await sh('sbk-snap --keep-snapshots 2 k1 | sbk-changelog | sbk-send | sbk-pack', sb);
      expect(r.exitCode, r.stderr).toBe(0);
      const s = await sets('k1');
      expect(s).toHaveLength(2);
      expect(await confirmed('k1')).toEqual(s);
    }
    // sbk-pack removes the set of a backup it could not store; the newest confirmed one stays the parent.
    await change('k1', 5);
    const cut = await sh('sbk-snap k1 | sbk-send | head -c 3000 | sbk-pack', sb);
    expect(cut.exitCode).toBe(4);
    expect(await sets('k1')).toHaveLength(2);
    const r = await sh('sbk-snap --keep-snapshots 1 k1 | sbk-send | sbk-pack', sb);
    expect(r.exitCode, r.stderr).toBe(0);
    const s = await sets('k1');
    expect(s).toHaveLength(1);
    expect(await confirmed('k1')).toEqual(s);
    expect(r.stdout.trim()).toContain(`k1_${s[0]}.tar.gz`);
    expect((await ls(path.join(sb.backupDir, 'k1'))).filter((n) => n.startsWith('.'))).toEqual([]);
  });

  it('never removes the set of a pipeline still running, nor the parent it is sent against', async () => {
    await makeContainer(sb, 'k2', { volumes: ['rootfs'], content: false });
    await change('k2', 1);
    expect((await sh('sbk-snap k2 | sbk-send | sbk-pack', sb)).exitCode).toBe(0);
    const [parent] = await sets('k2');
    // A slow pipeline: its snapshots are made, its shell is still running (the send has not begun).
    await change('k2', 2);
    const rec = path.join(sb.dir, 'slow.ndjson');
    // exec: the shell that ran sbk-snap (its parent) is the process that stays alive.
    const slow = execa('bash', ['-c', `sbk-snap k2 > ${rec}; exec sleep 30`], {
      reject: false,
      stdin: 'ignore',
      env: { ...process.env, ...sb.env, PATH: `${path.join(ROOT, 'bin')}:${process.env.PATH}` },
    });
    try {
      await until(async () => existsSync(rec) && (await readFile(rec, 'utf8')).endsWith('\n'), 'the slow run\'s record', 10_000, 100).catch(() => {});
      const slowSet = JSON.parse(await readFile(rec, 'utf8')).set as string;
      // A faster run overtakes it and confirms, keeping 1: neither the slow set nor its parent may go.
      await change('k2', 3);
      const fast = await sh('sbk-snap --keep-snapshots 1 k2 | sbk-send | sbk-pack', sb);
      expect(fast.exitCode, fast.stderr).toBe(0);
      expect(existsSync(slowSet)).toBe(true);
      expect(existsSync(path.join(sb.backupDir, 'k2', parent!))).toBe(true);
      // The slow pipeline finishes: its incremental is stored and its chain is whole.
      const done = await sh(`sbk-send < ${rec} | sbk-pack`, sb);
      expect(done.exitCode, done.stderr).toBe(0);
      const list = await sh('sbk-plan k2 --list --json', sb);
      expect(list.stdout.trim().split('\n').map((l) => JSON.parse(l).chain)).toEqual(['complete', 'complete', 'complete']);
    } finally {
      slow.kill();
      await slow;
    }
    // Its shell gone, the next confirmation prunes normally.
    await change('k2', 4);
    expect((await sh('sbk-snap --keep-snapshots 1 k2 | sbk-send | sbk-pack', sb)).exitCode).toBe(0);
    expect(await sets('k2')).toHaveLength(1);
  });
});
