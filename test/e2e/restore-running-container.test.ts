// sbk-unpack and containers that LXC runs: real busybox containers (test/helpers/lxc.ts) with the
// Subutai layout. Replacing one while it runs would delete its volumes from under it: refused
// (exit 6) before anything is received, and the container keeps running, intact; --force --stop
// stops it for the swap and starts the restored one. --start starts a restored container (under
// a new name: its own host name, MAC and veth), and one LXC cannot start exits 8, in place.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile, appendFile, mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { BIN, sh } from '../helpers/sandbox.js';
import { lxcMode, makeLxcSandbox, LXC_EXTRA_VOLUMES, type LxcSandbox } from '../helpers/lxc.js';
import { until } from '../helpers/wait.js';

const mode = lxcMode();

describe.skipIf(mode === 'skip')('sbk-unpack --force and a running LXC container', () => {
  let sb: LxcSandbox;

  beforeAll(async () => {
    sb = await makeLxcSandbox({ sizeMiB: 512 });
    await sb.lxc.create('c1');
    const r = await sh('sbk-snap c1 | sbk-changelog | sbk-send | sbk-pack', sb);
    expect(r.exitCode, r.stderr).toBe(0);
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  const markers = async () =>
    Promise.all(LXC_EXTRA_VOLUMES.map((v) => readFile(path.join(sb.lxcDir, 'c1', v, 'sbk-marker'), 'utf8')));
  const leftovers = async () => (await readdir(sb.lxcDir)).filter((n) => n.startsWith('.sbk-restore-'));

  it('the container runs with its home, opt and var subvolumes bound in', async () => {
    await sb.lxc.start('c1');
    expect(await sb.lxc.state('c1')).toBe('RUNNING');
    const mounts = await sb.lxc.attach('c1', ['cat', '/proc/mounts']);
    for (const v of LXC_EXTRA_VOLUMES) expect(mounts).toMatch(new RegExp(` /${v} btrfs .*subvol=/lxc/c1/${v}[ ,]`));
    expect(await sb.lxc.attach('c1', ['cat', '/opt/sbk-marker'])).toBe('c1 opt');
  });

  it('is refused while the container runs (exit 6, one line), before anything is received; it keeps running, intact', async () => {
    const before = await markers();
    const r = await sh('sbk-plan c1 | sbk-unpack --force', sb);
    expect(r.exitCode).toBe(6);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^sbk-unpack: container c1 is RUNNING: .*stop it first \(lxc-stop -P \S+ -n c1\)$/m);
    expect(r.stderr).not.toMatch(/replaced/);
    expect(await sb.lxc.state('c1')).toBe('RUNNING');
    expect(await markers()).toEqual(before);
    expect(await sb.lxc.attach('c1', ['cat', '/home/sbk-marker'])).toBe('c1 home');
    expect(await leftovers()).toEqual([]);
  });

  it('is refused while the container is frozen', async () => {
    await sh(`lxc-freeze -P ${sb.lxcDir} -n c1`, undefined);
    try {
      expect(await sb.lxc.state('c1')).toBe('FROZEN');
      const r = await sh('sbk-plan c1 | sbk-unpack --force', sb);
      expect(r.exitCode).toBe(6);
      expect(r.stderr).toMatch(/container c1 is FROZEN: .*lxc-stop -P/);
    } finally {
      await sh(`lxc-unfreeze -P ${sb.lxcDir} -n c1`, undefined);
    }
    expect(await sb.lxc.state('c1')).toBe('RUNNING');
    expect(await leftovers()).toEqual([]);
  });

  it('is refused when the container was started through another spelling of the LXC dir (a symlink)', async () => {
    const link = path.join(sb.dir, 'lxc-link');
    await sh(`ln -s ${sb.lxcDir} ${link}`, undefined);
    const r = await sh('sbk-plan c1 | sbk-unpack --force', sb, { env: { SBK_LXC_DIR: link, SBK_BACKUP_DIR: sb.backupDir } });
    expect(r.exitCode).toBe(6);
    expect(r.stderr).toMatch(/container c1 is RUNNING/);
  });

  it('is refused when the container is started while the archives are being received (checked again before the swap)', async () => {
    await sb.lxc.stop('c1');
    const before = await markers();
    const archive = (await sh('sbk-plan c1', sb)).stdout.trim().split('\n')[0]!;
    const bytes = await readFile(archive);
    const child = execa(BIN('sbk-unpack'), ['--force'], {
      stdin: 'pipe',
      reject: false,
      encoding: 'utf8',
      env: { ...sb.env },
    });
    try {
      // The head of the archive: its manifest passes the first check (c1 is stopped), the
      // receive starts in a temporary directory and waits for the rest.
      child.stdin!.write(bytes.subarray(0, 4096));
      await until(async () => (await leftovers()).length > 0);
      await sb.lxc.start('c1');
      child.stdin!.end(bytes.subarray(4096));
      const r = await child;
      expect(r.exitCode, r.stderr).toBe(6);
      expect(r.stderr).toMatch(/container c1 is RUNNING: .*stop it first/);
    } finally {
      child.kill('SIGKILL');
      await child.catch(() => {});
    }
    expect(await sb.lxc.state('c1')).toBe('RUNNING');
    expect(await markers()).toEqual(before);
    expect(await sb.lxc.attach('c1', ['cat', '/home/sbk-marker'])).toBe('c1 home');
    expect(await leftovers()).toEqual([]);
  });

  it('once stopped, --force replaces it, and the restored container starts', async () => {
    await sb.lxc.stop('c1');
    const r = await sh('sbk-plan c1 | sbk-unpack --force', sb);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/replaced the old one/);
    expect(await markers()).toEqual(LXC_EXTRA_VOLUMES.map((v) => `c1 ${v}\n`));
    await sb.lxc.start('c1');
    expect(await sb.lxc.attach('c1', ['cat', '/var/sbk-marker'])).toBe('c1 var');
    await sb.lxc.stop('c1');
    expect(await sb.lxc.state('c1')).toBe('STOPPED');
  });

  it('--force --stop over a running container stops it, swaps, and starts the restored one', async () => {
    await sb.lxc.start('c1');
    // Written after the backup: the restored container does not have it.
    await sb.lxc.attach('c1', ['sh', '-c', 'echo later > /home/after-backup']);
    const r = await sh('sbk-plan c1 | sbk-unpack --force --stop', sb);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/stopping container c1 \(lxc-stop -P \S+ -n c1 -t 30\)/);
    expect(r.stderr).toMatch(/replaced the old one/);
    expect(r.stderr).toMatch(/started c1: RUNNING/);
    expect(await sb.lxc.state('c1')).toBe('RUNNING');
    expect(await sb.lxc.attach('c1', ['cat', '/home/sbk-marker'])).toBe('c1 home');
    expect(await sb.lxc.attach('c1', ['sh', '-c', 'test -e /home/after-backup && echo there || echo gone'])).toBe('gone');
    expect(await leftovers()).toEqual([]);
  });

  it('--force --stop over a stopped container replaces it and leaves it stopped', async () => {
    await sb.lxc.stop('c1');
    const r = await sh('sbk-plan c1 | sbk-unpack --force --stop', sb);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).not.toMatch(/stopping|started/);
    expect(await sb.lxc.state('c1')).toBe('STOPPED');
    expect(await markers()).toEqual(LXC_EXTRA_VOLUMES.map((v) => `c1 ${v}\n`));
  });

  it('--stop without --force is a usage error', async () => {
    const r = await sh('sbk-plan c1 | sbk-unpack --stop', sb);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/--stop stops the container that --force replaces: give --force too/);
  });

  const backup = async (name: string) => {
    const r = await sh(`sbk-snap ${name} | sbk-changelog | sbk-send | sbk-pack`, sb);
    expect(r.exitCode, r.stderr).toBe(0);
    return r.stdout.trim();
  };

  it('Full + incrementals restored under a new name with --start: it runs, with its host name, the data of that point and a new MAC', async () => {
    const cdir = await sb.lxc.create('web');
    // A network with a MAC (a veth with no link: it reaches nothing), so that the copy must get
    // its own MAC and host-side veth name to run beside the original.
    const config = (await readFile(path.join(cdir, 'config'), 'utf8')).replace(
      /^lxc\.net\.0\.type = empty$/m,
      'lxc.net.0.type = veth\nlxc.net.0.hwaddr = 00:16:3e:5b:0a:01\nlxc.net.0.veth.pair = vethsbkweb',
    );
    await writeFile(path.join(cdir, 'config'), config);
    await sb.lxc.start('web');
    const archives: string[] = [];
    for (const n of [1, 2, 3]) {
      await sb.lxc.attach('web', ['sh', '-c', `echo ${n} > /var/point && echo ${n} > /opt/point`]);
      archives.push(await backup('web'));
    }
    expect(archives.map((a) => a.endsWith('_Full.tar.gz'))).toEqual([true, false, false]);
    sb.lxc.track('web-new');
    const r = await sh(`sbk-unpack --as web-new --start ${archives[0]} ${archives[1]}`, sb);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/started web-new: RUNNING/);
    expect(await sb.lxc.state('web-new')).toBe('RUNNING');
    expect(await sb.lxc.state('web')).toBe('RUNNING');
    expect(await sb.lxc.attach('web-new', ['hostname'])).toBe('web-new');
    expect(await sb.lxc.attach('web-new', ['cat', '/var/point', '/opt/point'])).toBe('2\n2');
    expect(await sb.lxc.attach('web', ['cat', '/var/point'])).toBe('3');
    const restored = await readFile(path.join(sb.lxcDir, 'web-new', 'config'), 'utf8');
    const mac = /^lxc\.net\.0\.hwaddr = (\S+)$/m.exec(restored)?.[1];
    expect(mac).toMatch(/^[0-9a-f][26ae](:[0-9a-f]{2}){5}$/);
    expect(mac).not.toBe('00:16:3e:5b:0a:01');
    expect(restored).toMatch(new RegExp(`^lxc\\.net\\.0\\.veth\\.pair = veth${mac!.split(':').slice(3).join('')}$`, 'm'));
    expect(await sb.lxc.attach('web-new', ['cat', '/sys/class/net/eth0/address'])).toBe(mac);
    // LXC 5 quotes the host name: the new one is written the same way.
    expect(restored).toMatch(/^lxc\.uts\.name = "web-new"$/m);
    expect(restored).toContain(`lxc.rootfs.path = btrfs:${sb.lxcDir}/web-new/rootfs`);
    expect(restored).not.toContain(`${sb.lxcDir}/web/`);
  });

  it('a restored container LXC cannot start: exit 8, said in one line, the container stays in place', async () => {
    const cdir = await sb.lxc.create('broken');
    await appendFile(path.join(cdir, 'config'), 'lxc.init.cmd = /sbin/no-such-init\n');
    const archive = await backup('broken');
    sb.lxc.track('broken-copy');
    const r = await sh(`sbk-unpack -q --as broken-copy --start ${archive}`, sb);
    expect(r.exitCode).toBe(8);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(
      /^sbk-unpack: container broken-copy did not start: .*Failed to exec "\/sbin\/no-such-init".*; the restored container stays in place at \S+\/broken-copy: see why with lxc-start -F -P \S+ -n broken-copy$/m,
    );
    expect(existsSync(path.join(sb.lxcDir, 'broken-copy', 'config'))).toBe(true);
    expect(await sb.lxc.state('broken-copy')).toBe('STOPPED');
    expect(await leftovers()).toEqual([]);
  });

  it('a mount entry binding a host path missing here: the restore warns, and --start fails saying so (exit 8)', async () => {
    const hostData = path.join(sb.dir, 'host-data');
    await mkdir(hostData);
    const cdir = await sb.lxc.create('hostbind');
    await appendFile(path.join(cdir, 'config'), `lxc.mount.entry = ${hostData} srv none bind,create=dir 0 0\n`);
    const archive = await backup('hostbind');
    await rm(hostData, { recursive: true });
    sb.lxc.track('hostbind-copy');
    const r = await sh(`sbk-unpack --as hostbind-copy --start ${archive}`, sb);
    expect(r.exitCode).toBe(8);
    expect(r.stderr).toContain(
      `warning: hostbind-copy: lxc.mount.entry binds ${hostData} (at srv), a host path that is not in the backup and does not exist on this host`,
    );
    expect(r.stderr).toMatch(/container hostbind-copy did not start: .*; the restored container stays in place at /);
    expect(await sb.lxc.state('hostbind-copy')).toBe('STOPPED');
  });

  it('--stop kills a container that does not stop within --stop-timeout, says so, and starts the restored one', async () => {
    const cdir = await sb.lxc.create('stubborn');
    // A halt signal its init ignores: the clean stop cannot succeed.
    await appendFile(path.join(cdir, 'config'), 'lxc.signal.halt = SIGWINCH\n');
    await backup('stubborn');
    await sb.lxc.start('stubborn');
    const r = await sh('sbk-plan stubborn | sbk-unpack --force --stop --stop-timeout 2', sb);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: container stubborn did not stop within 2 s: killing it \(lxc-stop -P \S+ -n stubborn -k\)/);
    expect(r.stderr).toMatch(/replaced the old one/);
    expect(r.stderr).toMatch(/started stubborn: RUNNING/);
    expect(await sb.lxc.state('stubborn')).toBe('RUNNING');
  });
});
