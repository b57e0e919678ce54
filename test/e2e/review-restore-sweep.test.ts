// What a --force restore that died between its two renames leaves: the replaced container in
// <lxc-dir>/.sbk-restore-<name>-<pid>/old and nothing at <lxc-dir>/<name>. The next restore of
// that name must put the container back before anything else, never delete it as leftovers.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, sh, ROOT, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();
const FULL = path.join(ROOT, 'test/fixtures/archives/fx_1795673813_Full.tar.gz');

describe.skipIf(mode === 'skip')('sbk-unpack after a --force restore died half-way through the swap', () => {
  let sb: Sandbox;
  let deadPid: number;

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'review-restore-sweep' });
    await mkdir(sb.lxcDir, { recursive: true });
    const p = execa('true');
    deadPid = p.pid!;
    await p;
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
  const leftovers = async () => (await readdir(sb.lxcDir)).filter((n) => n.startsWith('.sbk-restore-'));

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
