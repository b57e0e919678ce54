// System errors on the restore path are user errors with the right exit code, never exit 70
// with a stack: an unreadable archive path, a target that is a mount point or a symlink, an LXC
// dir that is not a directory, and a failed fsync of the LXC dir once the container is in place.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmod, copyFile, mkdir, readdir, readFile, readlink, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, sh, ROOT, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();
const FULL = path.join(ROOT, 'test/fixtures/archives/fx_1795673813_Full.tar.gz');
const NO_STACK = /at .*\.m?js:\d+|internal error/;

describe.skipIf(mode === 'skip')('sbk-unpack: system errors on the restore path', () => {
  let sb: Sandbox;

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'fix-restore-errors' });
    await mkdir(sb.lxcDir, { recursive: true });
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  const leftovers = async () => (await readdir(sb.lxcDir)).filter((n) => n.startsWith('.sbk-restore-'));

  it('an archive path the user may not read is "permission denied" (exit 1), not "no such archive" (exit 5)', async () => {
    const hidden = path.join(sb.dir, 'hidden');
    await mkdir(hidden, { mode: 0o700 });
    await copyFile(FULL, path.join(hidden, 'fx_1795673813_Full.tar.gz'));
    await chmod(hidden, 0o700);
    const file = path.join(hidden, 'fx_1795673813_Full.tar.gz');
    for (const args of ['--verify', '--as x1']) {
      const r = await sh(`setpriv --reuid=65534 --regid=65534 --clear-groups ${ROOT}/bin/sbk-unpack ${args} '${file}'`, sb);
      expect(r.exitCode, r.stderr).toBe(1);
      expect(r.stderr).toMatch(/permission denied/);
      expect(r.stderr).not.toMatch(/no such archive/);
      expect(r.stderr).not.toMatch(NO_STACK);
    }
    // A path that really is missing is still exit 5.
    const r = await sh(`sbk-unpack --verify '${hidden}/missing_1_Full.tar.gz'`, sb);
    expect(r.exitCode, r.stderr).toBe(5);
  });

  it('--force onto a target that is a mount point fails clearly (exit 1); the mount and its content stay', async () => {
    const target = path.join(sb.lxcDir, 'mp');
    const src = path.join(sb.dir, 'mp-src');
    await mkdir(target);
    await mkdir(src);
    await writeFile(path.join(src, 'keep'), 'kept\n');
    await execa('mount', ['--bind', src, target]);
    try {
      const r = await sh(`sbk-unpack --as mp --force '${FULL}'`, sb);
      expect(r.exitCode, r.stderr).toBe(1);
      expect(r.stderr).toMatch(/mount point/);
      expect(r.stderr).not.toMatch(NO_STACK);
      expect(await readFile(path.join(target, 'keep'), 'utf8')).toBe('kept\n');
      expect(await leftovers()).toEqual([]);
    } finally {
      await execa('umount', [target], { reject: false });
    }
  });

  it('a dangling symlink at the target: refused without --force (exit 6), replaced with it', async () => {
    const target = path.join(sb.lxcDir, 'ln');
    await symlink('/nonexistent/sbk-test', target);
    const r = await sh(`sbk-unpack --as ln '${FULL}'`, sb);
    expect(r.exitCode, r.stderr).toBe(6);
    expect(r.stderr).not.toMatch(NO_STACK);
    expect(await readlink(target)).toBe('/nonexistent/sbk-test');
    const f = await sh(`sbk-unpack --as ln --force '${FULL}'`, sb);
    expect(f.exitCode, f.stderr).toBe(0);
    expect(await readFile(path.join(target, 'rootfs/etc/hostname'), 'utf8')).toBe('fx\n');
    expect(await leftovers()).toEqual([]);
  });

  it('an LXC dir that is a file, not a directory, is a clear error', async () => {
    const file = path.join(sb.lxcDir, 'not-a-dir');
    await writeFile(file, '');
    const r = await sh(`sbk-unpack --as nd '${FULL}'`, sb, { env: { SBK_LXC_DIR: file } });
    expect(r.exitCode, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/not a directory/);
    expect(r.stderr).not.toMatch(NO_STACK);
  });

  it('a failed fsync of the LXC dir after the final rename says the container is in place', async () => {
    // strace fails every fsync(2) of the LXC dir itself with EIO (nothing else is touched).
    const r = await sh(
      `strace -f -qq -o /dev/null -P '${sb.lxcDir}' -e trace=fsync -e inject=fsync:error=EIO ${ROOT}/bin/sbk-unpack --as fs1 '${FULL}'`,
      sb,
    );
    expect(r.exitCode, r.stderr).toBe(1);
    expect(r.stderr).toMatch(/fs1 is in place/);
    expect(r.stderr).toMatch(/I\/O error/);
    expect(r.stderr).not.toMatch(NO_STACK);
    expect(r.stderr).not.toMatch(/restore failed/);
    expect(await readFile(path.join(sb.lxcDir, 'fs1/rootfs/etc/hostname'), 'utf8')).toBe('fx\n');
    expect(await leftovers()).toEqual([]);
  });
});
