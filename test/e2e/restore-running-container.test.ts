// sbk-unpack --force and a container that LXC runs: a real busybox container (test/helpers/lxc.ts)
// with the Subutai layout. Replacing it while it runs would delete its volumes from under it:
// refused (exit 6) before anything is received, and the container keeps running, intact.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readdir, readFile } from 'node:fs/promises';
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
});
