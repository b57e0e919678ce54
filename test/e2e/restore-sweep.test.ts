// Every restore sweeps the leftovers of ALL dead restores in the LXC dir, not only those of the
// name it restores: each under that name's restore lock, taken without waiting (a busy name is
// skipped), putting a half-swapped --force container back first. Live restores' are kept.
// A --force restore that died between its two renames leaves the replaced container in
// <lxc-dir>/.sbk-restore-<name>-<pid>/old and nothing at <lxc-dir>/<name>: the next restore of
// that name must put the container back before anything else, never delete it as leftovers.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { e2eMode, makeSandbox, makeContainer, sh, type Sandbox } from '../helpers/sandbox.js';
import { FX_FULL as FULL, deadPid as exitedPid, restoreLeftovers } from '../helpers/restore.js';
import { lockTaken, until } from '../helpers/wait.js';

const mode = e2eMode();

describe.skipIf(mode === 'skip')('sbk-unpack sweeps the leftovers of every dead restore', () => {
  let sb: Sandbox;
  let deadPid: number;
  let holder: ResultPromise | undefined;

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'restore-sweep-all' });
    await mkdir(sb.lxcDir, { recursive: true });
    deadPid = await exitedPid();
  });
  afterAll(async () => {
    holder?.kill();
    await holder?.catch(() => {});
    await sb?.cleanup();
  });

  const tmpOf = (name: string, pid = deadPid) => path.join(sb.lxcDir, `.sbk-restore-${name}-${pid}`);
  const leftovers = async () => (await restoreLeftovers(sb.lxcDir)).sort();

  /** A dead restore's directory with a received (read-only) subvolume in it, as receive leaves it. */
  const deadRestore = async (name: string, pid = deadPid) => {
    const tmp = tmpOf(name, pid);
    await mkdir(path.join(tmp, 'r0/rootfs'), { recursive: true, mode: 0o700 });
    await execa('btrfs', ['subvolume', 'create', path.join(tmp, 'r0/rootfs/rootfs')]);
    await writeFile(path.join(tmp, 'r0/rootfs/rootfs/data'), 'received\n');
    await execa('btrfs', ['property', 'set', '-ts', path.join(tmp, 'r0/rootfs/rootfs'), 'ro', 'true']);
    return tmp;
  };

  it('a restore of another name puts a half-swapped container back and removes every dead leftover', async () => {
    // c1: a --force restore killed between its two renames (old/ holds the only copy).
    const c = await makeContainer(sb, 'c1', { volumes: ['rootfs', 'home'] });
    await writeFile(path.join(c, 'rootfs/precious'), 'the only copy\n');
    await deadRestore('c1');
    await rename(c, path.join(tmpOf('c1'), 'old'));
    // c2: killed while receiving. c3: a live restore (this test's pid): not to be touched.
    await deadRestore('c2');
    await deadRestore('c3', process.pid);
    // c4: dead, but its lock is held (a live restore of c4 about to sweep it): skipped.
    await deadRestore('c4');
    await mkdir(path.join(sb.lxcDir, '.sbk-locks'), { recursive: true });
    const c4Lock = path.join(sb.lxcDir, '.sbk-locks/c4.lock');
    holder = execa('flock', ['-F', '-x', c4Lock, 'sleep', '600']);
    await until(() => lockTaken(c4Lock), "the holder to take c4's lock");

    const r = await sh(`sbk-unpack --as fx1 '${FULL}'`, sb);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/put c1 back/);
    expect(await readFile(path.join(sb.lxcDir, 'c1/rootfs/precious'), 'utf8')).toBe('the only copy\n');
    expect(await readFile(path.join(sb.lxcDir, 'fx1/rootfs/etc/hostname'), 'utf8')).toBe('fx\n');
    expect(await leftovers()).toEqual([path.basename(tmpOf('c3', process.pid)), path.basename(tmpOf('c4'))].sort());

    // Once c4's lock is free, the next restore (of any name) removes its leftovers too.
    holder.kill();
    await holder.catch(() => {});
    holder = undefined;
    const r2 = await sh(`sbk-unpack --as fx2 '${FULL}'`, sb);
    expect(r2.exitCode, r2.stderr).toBe(0);
    expect(await leftovers()).toEqual([path.basename(tmpOf('c3', process.pid))]);
    // Nothing was made at c2 or c4 (they had no old/).
    expect((await readdir(sb.lxcDir)).filter((n) => /^c[24]$/.test(n))).toEqual([]);
  });

  it('a restore that is refused (exit 6) still sweeps; a target that exists keeps old/ from being put back', async () => {
    // c5: killed after both renames (the new c5 is in place, old/ is the replaced one).
    const fresh = await makeContainer(sb, 'c5', { volumes: ['rootfs'] });
    await writeFile(path.join(fresh, 'rootfs/which'), 'new\n');
    const replaced = await makeContainer(sb, 'c5-old', { volumes: ['rootfs'] });
    await deadRestore('c5');
    await rename(replaced, path.join(tmpOf('c5'), 'old'));
    const r = await sh(`sbk-unpack --as fx1 '${FULL}'`, sb);
    expect(r.exitCode, r.stderr).toBe(6);
    expect(r.stderr).not.toMatch(/put c5 back/);
    expect(await readFile(path.join(sb.lxcDir, 'c5/rootfs/which'), 'utf8')).toBe('new\n');
    expect(await leftovers()).toEqual([path.basename(tmpOf('c3', process.pid))]);
  });
});

describe.skipIf(mode === 'skip')('sbk-unpack after a --force restore died half-way through the swap', () => {
  let sb: Sandbox;
  let deadPid: number;

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'restore-sweep' });
    await mkdir(sb.lxcDir, { recursive: true });
    deadPid = await exitedPid();
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  /** c1, moved where a killed --force restore leaves it. */
  const halfSwapped = async (name: string) => {
    const c = await makeContainer(sb, name, { volumes: ['rootfs', 'home'] });
    await writeFile(path.join(c, 'rootfs/precious'), 'the only copy\n');
    const tmp = path.join(sb.lxcDir, `.sbk-restore-${name}-${deadPid}`);
    await mkdir(tmp, { mode: 0o700 });
    await rename(c, path.join(tmp, 'old'));
    return tmp;
  };
  const leftovers = () => restoreLeftovers(sb.lxcDir);

  it('without --force: the old container is put back and the restore refuses to replace it (exit 6)', async () => {
    await halfSwapped('c1');
    const r = await sh(`sbk-unpack --as c1 '${FULL}'`, sb);
    expect(await readFile(path.join(sb.lxcDir, 'c1/rootfs/precious'), 'utf8')).toBe('the only copy\n');
    expect(r.exitCode, r.stderr).toBe(6);
    expect(r.stderr).toMatch(/put .*c1.* back/);
    expect(await leftovers()).toEqual([]);
  });

  it('with --force: it is put back, then replaced by the restored one', async () => {
    await halfSwapped('c2');
    const r = await sh(`sbk-unpack --as c2 --force '${FULL}'`, sb);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toContain('replaced the old one');
    expect(await readFile(path.join(sb.lxcDir, 'c2/rootfs/etc/hostname'), 'utf8')).toBe('fx\n');
    expect(await leftovers()).toEqual([]);
  });
});
