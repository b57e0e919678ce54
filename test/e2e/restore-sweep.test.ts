// Every restore sweeps the leftovers of ALL dead restores in the LXC dir, not only those of the
// name it restores: each under that name's restore lock, taken without waiting (a busy name is
// skipped), putting a half-swapped --force container back first. Live restores' are kept.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { e2eMode, makeSandbox, makeContainer, sh, ROOT, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();
const FULL = path.join(ROOT, 'test/fixtures/archives/fx_1795673813_Full.tar.gz');

describe.skipIf(mode === 'skip')('sbk-unpack sweeps the leftovers of every dead restore', () => {
  let sb: Sandbox;
  let deadPid: number;
  let holder: ResultPromise | undefined;

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'fix-restore-sweep-all' });
    await mkdir(sb.lxcDir, { recursive: true });
    const p = execa('true');
    deadPid = p.pid!;
    await p;
  });
  afterAll(async () => {
    holder?.kill();
    await holder?.catch(() => {});
    await sb?.cleanup();
  });

  const tmpOf = (name: string, pid = deadPid) => path.join(sb.lxcDir, `.sbk-restore-${name}-${pid}`);
  const leftovers = async () => (await readdir(sb.lxcDir)).filter((n) => n.startsWith('.sbk-restore-')).sort();

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
    holder = execa('flock', ['-F', '-x', path.join(sb.lxcDir, '.sbk-locks/c4.lock'), 'sleep', '600']);
    await new Promise((r) => setTimeout(r, 300));

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
