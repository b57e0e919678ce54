// Restores the committed fixture archives (test/fixtures/archives, made by an earlier sbk and
// by hand in the original Subutai layout): a later sbk must still restore what was written
// before. Also an LXC 3 container (lxc.rootfs.path = btrfs:…, lxc.net.0.*) under a new name.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readdir, readFile, readlink } from 'node:fs/promises';
import { execa } from 'execa';
import path from 'node:path';
import { e2eMode, makeSandbox, makeContainer, sh, treeDiff, ROOT, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();
const FIXTURES = path.join(ROOT, 'test/fixtures/archives');

describe.skipIf(mode === 'skip')('restoring fixture archives on loopback BTRFS', () => {
  let sb: Sandbox;
  let full: string;
  let incr: string;
  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256 });
    const names = await readdir(FIXTURES);
    full = path.join(FIXTURES, names.find((n) => /^fx_\d+_Full\.tar\.gz$/.test(n))!);
    incr = path.join(FIXTURES, names.find((n) => /^fx_\d+\.tar\.gz$/.test(n))!);
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  const xattr = async (p: string, name: string) =>
    (await execa('getfattr', ['--only-values', '-n', name, p], { reject: false })).stdout;

  it('restores the sbk fixture chain at both points', async () => {
    const plan = await sh(`sbk-plan fx --dir '${FIXTURES}'`, sb);
    expect(plan.exitCode, plan.stderr).toBe(0);
    expect(plan.stdout.split('\n')).toEqual([full, incr]);

    const r0 = await sh(`sbk-unpack --as fx0 '${full}'`, sb);
    expect(r0.exitCode, r0.stderr).toBe(0);
    const d0 = path.join(sb.lxcDir, 'fx0');
    expect(await readFile(path.join(d0, 'rootfs/etc/hostname'), 'utf8')).toBe('fx\n');
    expect(await xattr(path.join(d0, 'rootfs/etc/hostname'), 'user.fixture')).toBe('one');
    expect(await readlink(path.join(d0, 'rootfs/etc/numbers-link'))).toBe('numbers');
    expect(await readFile(path.join(d0, 'home/user/notes'), 'utf8')).toBe('first notes\n');

    const r1 = await sh(`sbk-plan fx --dir '${FIXTURES}' | sbk-unpack`, sb);
    expect(r1.exitCode, r1.stderr).toBe(0);
    const d1 = path.join(sb.lxcDir, 'fx');
    expect(await readFile(path.join(d1, 'home/user/notes'), 'utf8')).toBe('second notes\n');
    expect(await readFile(path.join(d1, 'home/user/added'), 'utf8')).toBe('added\n');
    expect(await readdir(path.join(d1, 'rootfs/etc'))).toEqual(['hostname', 'numbers']);
    const nums = await readFile(path.join(d1, 'rootfs/etc/numbers'), 'utf8');
    expect(nums).toBe(Array.from({ length: 2000 }, (_, i) => `${i + 1}\n`).join(''));
    const cfg = await readFile(path.join(d1, 'config'), 'utf8');
    expect(cfg).toContain(`lxc.rootfs = ${d1}/rootfs\n`);
    expect(cfg).toContain('lxc.network.hwaddr = 00:16:3e:00:00:01\n'); // same name: identity kept
  });

  it('restores the original-layout fixture, warning that it carries no checksums', async () => {
    const old = path.join(FIXTURES, 'old_1477297700_Full.tar.gz');
    const r = await sh(`sbk-unpack '${old}'`, sb);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toContain('old_1477297700_Full is an archive of the original Subutai tool: it carries no checksums');
    const d = path.join(sb.lxcDir, 'old');
    expect(await readFile(path.join(d, 'home/user/notes'), 'utf8')).toBe('first notes\n');
    expect(await readFile(path.join(d, 'rootfs/etc/hostname'), 'utf8')).toBe('fx\n');
    const cfg = await readFile(path.join(d, 'config'), 'utf8');
    expect(cfg).toContain('lxc.utsname = old\n');
    expect(cfg).toContain(`lxc.mount.entry = ${d}/home home none bind,rw 0 0\n`);
    expect(cfg).not.toContain('00:16:3e:00:00:01');
  });

  it('restores an LXC 3 container under a new name', async () => {
    await makeContainer(sb, 'n3', { lxc3: true, volumes: ['rootfs', 'home'] });
    const b = await sh('sbk-snap n3 | sbk-send | sbk-pack', sb);
    expect(b.exitCode, b.stderr).toBe(0);
    const r = await sh('sbk-plan n3 | sbk-unpack --as n3copy', sb);
    expect(r.exitCode, r.stderr).toBe(0);
    const d = path.join(sb.lxcDir, 'n3copy');
    const set = path.join(sb.backupDir, 'n3', (await readdir(path.join(sb.backupDir, 'n3')))[0]!);
    for (const v of ['rootfs', 'home']) expect(await treeDiff(path.join(set, v), path.join(d, v))).toEqual([]);
    const cfg = await readFile(path.join(d, 'config'), 'utf8');
    expect(cfg).toContain(`lxc.rootfs.path = btrfs:${d}/rootfs\n`);
    expect(cfg).toContain(`lxc.mount.fstab = ${d}/fstab\n`);
    expect(cfg).toContain('lxc.uts.name = n3copy\n');
    const mac = /lxc\.net\.0\.hwaddr = (\S+)/.exec(cfg)![1]!;
    expect(mac).not.toBe('00:16:3e:5a:2b:01');
    expect(cfg).toContain(`lxc.net.0.veth.pair = veth${mac.split(':').slice(3).join('')}\n`);
  });
  it('replays the fixture chain and the original-layout archive with --to as the BTRFS restore restores them', async () => {
    const old = path.join(FIXTURES, 'old_1477297700_Full.tar.gz');
    for (const [name, archives] of [['fxr', `'${full}' '${incr}'`], ['oldr', `'${old}'`]] as const) {
      const received = await sh(`sbk-unpack --as ${name} ${archives}`, sb);
      expect(received.exitCode, received.stderr).toBe(0);
      const to = path.join(sb.dir, `${name}-replayed`); // not on BTRFS
      const replayed = await sh(`sbk-unpack --to '${to}' ${archives}`, sb);
      expect(replayed.exitCode, replayed.stderr).toBe(0);
      for (const v of ['rootfs', 'home']) expect(await treeDiff(path.join(sb.lxcDir, name, v), path.join(to, v)), `${name} ${v}`).toEqual([]);
    }
  });
});
