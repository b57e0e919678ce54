// Failures of `btrfs receive` and of the steps after it, through a `btrfs` on PATH that runs the
// real one except for one failing case: each is reported once with btrfs's message, with no
// stack trace, and leaves nothing behind (no temporary directory, no received subvolume).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmod, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import zlib from 'node:zlib';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, randomish, sh, ROOT, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();
const FIXTURES = path.join(ROOT, 'test/fixtures/archives');
const FULL = path.join(FIXTURES, 'fx_1795673813_Full.tar.gz');

/** A `btrfs` that runs `body` (bash) instead of the real one when `$1 $2…` matches `when`. */
async function faultyBtrfs(dir: string, when: string, body: string): Promise<string> {
  const real = (await execa('bash', ['-c', 'command -v btrfs'])).stdout.trim();
  await mkdir(dir, { recursive: true });
  const script = ['#!/bin/bash', `if [[ "$*" == ${when} ]]; then`, body, 'fi', `exec ${real} "$@"`].join('\n');
  await writeFile(path.join(dir, 'btrfs'), script + '\n');
  await chmod(path.join(dir, 'btrfs'), 0o755);
  return dir;
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
  const leftovers = async () => (await readdir(sb.lxcDir)).filter((n) => n.startsWith('.sbk-restore-'));
  const withBin = (bin: string) => ({ env: { PATH: `${bin}:${path.join(ROOT, 'bin')}:${process.env.PATH}` } });

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'review-restore-receive' });
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
