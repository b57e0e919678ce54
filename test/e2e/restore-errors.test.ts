// System errors on the restore path are user errors with the right exit code, never exit 70
// with a stack: an unreadable archive path, a target that is a mount point or a symlink, an LXC
// dir that is not a directory, and a failed fsync of the LXC dir once the container is in place.
// Then failures of `btrfs receive` and of the steps after it, through a `btrfs` on PATH that runs
// the real one except for one failing case: each is reported once with btrfs's message, with no
// stack trace, and leaves nothing behind (no temporary directory, no received subvolume).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmod, copyFile, mkdir, readFile, readlink, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, randomish, sh, ROOT, type Sandbox } from '../helpers/sandbox.js';
import { fakeBtrfs, withBin } from '../helpers/fake-btrfs.js';
import { FX_FULL as FULL, restoreLeftovers } from '../helpers/restore.js';

const mode = e2eMode();
const NO_STACK = /at .*\.m?js:\d+|internal error/;

describe.skipIf(mode === 'skip')('sbk-unpack: system errors on the restore path', () => {
  let sb: Sandbox;

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'restore-errors' });
    await mkdir(sb.lxcDir, { recursive: true });
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  const leftovers = () => restoreLeftovers(sb.lxcDir);

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

/** A `btrfs` that runs `body` (bash) instead of the real one when `$1 $2…` matches `when`. */
async function faultyBtrfs(dir: string, when: string, body: string): Promise<string> {
  return fakeBtrfs(dir, () => [`if [[ "$*" == ${when} ]]; then`, body, 'fi']);
}

describe.skipIf(mode === 'skip')('sbk-unpack when btrfs fails under it', () => {
  let sb: Sandbox;
  let fullTar: string;
  /** A Full of container big, whose rootfs delta is far larger than a pipe's buffer. */
  let bigFull: string;

  const subvolumes = async () =>
    (await execa('btrfs', ['subvolume', 'list', sb.mnt])).stdout
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split(' ').at(-1));
  const leftovers = () => restoreLeftovers(sb.lxcDir);

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'restore-receive' });
    await mkdir(sb.lxcDir, { recursive: true });
    fullTar = path.join(sb.dir, 'full.tar');
    await writeFile(fullTar, zlib.gunzipSync(await readFile(FULL)));
    const c = await makeContainer(sb, 'big', { volumes: ['rootfs', 'home'] });
    await writeFile(path.join(c, 'rootfs/payload.bin'), randomish(4 * 1024 * 1024, 5));
    const r = await sh('sbk-snap big | sbk-send | sbk-pack', sb);
    expect(r.exitCode, r.stderr).toBe(0);
    bigFull = r.stdout.trim();
  });

  afterAll(async () => {
    await sb?.cleanup();
  });

  it('a receive that fails while the input is slow to come: exit 1, btrfs\'s message once, nothing left', async () => {
    const bin = await faultyBtrfs(
      path.join(sb.dir, 'bin-slow'),
      'receive*',
      '  head -c 100 >/dev/null; echo "ERROR: simulated receive failure" >&2; exit 1',
    );
    // The first 6 KiB of rootfs's delta, then a pause (a slow ssh pipe), then the rest.
    const cut = 3584 + 6000;
    const before = await subvolumes();
    const r = await sh(`{ head -c ${cut} '${fullTar}'; sleep 2; tail -c +${cut + 1} '${fullTar}'; } | sbk-unpack --as slow`, sb, withBin(bin));
    expect(r.stderr).toMatch(/simulated receive failure/);
    expect(r.stderr.match(/simulated receive failure/g)).toHaveLength(1);
    expect(r.stderr).not.toMatch(/at .*\.m?js:\d+|internal error/);
    expect(r.exitCode).toBe(1);
    expect(await leftovers()).toEqual([]);
    expect(await subvolumes()).toEqual(before);
  });

  it('a receive that exits 0 before reading its whole stream: a clear error (exit 1), no stack, nothing left', async () => {
    const bin = await faultyBtrfs(path.join(sb.dir, 'bin-quits'), 'receive*', '  exec head -c 100 >/dev/null');
    const before = await subvolumes();
    const r = await sh(`sbk-unpack --as quits '${bigFull}'`, sb, withBin(bin));
    expect(r.stderr).not.toMatch(/at .*\.m?js:\d+|internal error|EPIPE/);
    expect(r.stderr).toMatch(/btrfs receive of rootfs stopped reading/);
    expect(r.exitCode).toBe(1);
    expect(await leftovers()).toEqual([]);
    expect(await subvolumes()).toEqual(before);
  });
});
