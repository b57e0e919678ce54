// A restore into an LXC dir that is not on BTRFS (an ext4 loop image): `sbk-plan c1 | sbk-unpack`
// replays the chain into plain directories, says so, and gives a container whose volumes equal
// the source's snapshots and whose config points at those directories, so lxc-start runs it.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { e2eMode, sh } from '../helpers/sandbox.js';
import { lxcHost, lxcMode, makeLxcSandbox, LXC_EXTRA_VOLUMES, type LxcHost, type LxcSandbox } from '../helpers/lxc.js';
import { makeScratchFs, volumesDiffs, type ScratchFs } from '../helpers/replay-chain.js';

const mode = e2eMode() === 'skip' ? 'skip' : lxcMode();
const VOLUMES = ['rootfs', ...LXC_EXTRA_VOLUMES];

describe.skipIf(mode === 'skip')('restore by replay onto a non-BTRFS LXC dir', () => {
  let sb: LxcSandbox;
  let ext4: ScratchFs;
  let plain: LxcHost;
  let lxcDir = '';
  const sets: string[] = [];
  const env = () => ({ SBK_LXC_DIR: lxcDir });

  const backup = async () => {
    const r = await sh('sbk-snap --keep-snapshots 100 c1 | sbk-changelog | sbk-send | sbk-pack', sb);
    expect(r.exitCode, r.stderr).toBe(0);
    const m = /c1_(\d+(?:_Full)?)\.tar\.gz$/.exec(r.stdout.trim())!;
    sets.push(path.join(sb.backupDir, 'c1', m[1]!));
  };

  beforeAll(async () => {
    sb = await makeLxcSandbox({ sizeMiB: 1024 });
    ext4 = await makeScratchFs('ext4');
    lxcDir = path.join(ext4.mnt, 'lxc');
    await mkdir(lxcDir);
    plain = lxcHost(lxcDir);
    const c = await sb.lxc.create('c1');
    await backup();
    await writeFile(path.join(c, 'home/notes'), 'second\n');
    await writeFile(path.join(c, 'rootfs/etc/motd'), 'restored by replay\n');
    await backup();
  });
  afterAll(async () => {
    await plain?.cleanup();
    await ext4?.cleanup();
    await sb?.cleanup();
  });

  it('replays the chain, points the config at plain directories, and lxc-start runs it', async () => {
    const r = await sh('sbk-plan c1 | sbk-unpack --as r1', sb, { env: env() });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toContain('is not on BTRFS: restoring by replay');
    const dir = path.join(lxcDir, 'r1');
    expect(await volumesDiffs(sets[1]!, dir, VOLUMES)).toEqual([]);
    const cfg = await readFile(path.join(dir, 'config'), 'utf8');
    expect(cfg).toMatch(new RegExp(`^lxc\\.rootfs\\.path = dir:${dir}/rootfs$`, 'm'));
    for (const v of LXC_EXTRA_VOLUMES) expect(cfg).toContain(`lxc.mount.entry = ${dir}/${v} ${v} none bind,rw 0 0`);
    expect(cfg).not.toMatch(/btrfs:/);
    expect((await readdir(lxcDir)).filter((n) => n.startsWith('.sbk-restore-'))).toEqual([]);

    await plain.start('r1');
    expect(await plain.attach('r1', ['cat', '/home/notes', '/etc/motd'])).toBe('second\nrestored by replay');
    await plain.stop('r1');
  });

  it('refuses an existing container as the BTRFS restore does', async () => {
    const r = await sh('sbk-plan c1 | sbk-unpack --as r1', sb, { env: env() });
    expect(r.exitCode).toBe(6);
    expect(r.stderr).toMatch(/already exists/);
  });
});
