// Two restores of the same chain under two names must not run at once: btrfs receive finds an
// incremental's parent by Received UUID anywhere on the filesystem, so one could pick the other's
// received subvolume (deleted once applied). A chain lock serializes them: exit 7 without
// --wait, after the first with it. The first restore is paused by a slow `btrfs receive`.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { e2eMode, makeSandbox, sh, ROOT, type Sandbox } from '../helpers/sandbox.js';
import { fakeBtrfs } from '../helpers/fake-btrfs.js';
import { FIXTURE_ARCHIVES as FIXTURES } from '../helpers/restore.js';
import { until } from '../helpers/wait.js';

const mode = e2eMode();
const CHAIN = `'${FIXTURES}/fx_1795673813_Full.tar.gz' '${FIXTURES}/fx_1795673814.tar.gz'`;

/** A `btrfs` that sleeps before each `receive`, then runs the real one. */
async function slowBtrfs(dir: string, seconds: number): Promise<string> {
  return fakeBtrfs(dir, () => [`if [ "$1" = receive ]; then sleep ${seconds}; fi`]);
}

describe.skipIf(mode === 'skip')('sbk-unpack: concurrent restores of one chain', () => {
  let sb: Sandbox;

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'restore-locks' });
    await mkdir(sb.lxcDir, { recursive: true });
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  const restored = async (name: string) => {
    const d = path.join(sb.lxcDir, name);
    expect(await readFile(path.join(d, 'home/user/notes'), 'utf8')).toBe('second notes\n');
    expect(await readFile(path.join(d, 'home/user/added'), 'utf8')).toBe('added\n');
    expect(await readdir(path.join(d, 'rootfs/etc'))).toEqual(['hostname', 'numbers']);
  };

  it('a second restore of the chain under another name is exit 7 while the first runs, and waits with --wait', async () => {
    const bin = await slowBtrfs(path.join(sb.dir, 'slow-bin'), 1.5);
    const first = sh(`sbk-unpack --as a1 ${CHAIN}`, sb, { env: { PATH: `${path.join(ROOT, 'bin')}:${bin}:${process.env.PATH}` } });
    // The first holds the chain lock once its temporary directory exists.
    await until(async () => (await readdir(sb.lxcDir)).some((n) => n.startsWith('.sbk-restore-a1-')), 'the first restore to start', 10_000, 100).catch(() => {});
    expect((await readdir(sb.lxcDir)).some((n) => n.startsWith('.sbk-restore-a1-'))).toBe(true);

    const busy = await sh(`sbk-unpack --as b1 ${CHAIN}`, sb);
    expect(busy.exitCode, busy.stderr).toBe(7);
    expect(busy.stderr).toMatch(/locked by sbk-unpack \(restore of fx_1795673813_Full as a1/);
    expect(busy.stderr).toMatch(/--wait/);
    expect((await readdir(sb.lxcDir)).filter((n) => /^b1$|^\.sbk-restore-b1-/.test(n))).toEqual([]);

    const waited = await sh(`sbk-unpack --wait=60 --as b2 ${CHAIN}`, sb);
    const a = await first;
    expect(a.exitCode, a.stderr).toBe(0);
    expect(waited.exitCode, waited.stderr).toBe(0);
    await restored('a1');
    await restored('b2');
    expect((await readdir(sb.lxcDir)).filter((n) => n.startsWith('.sbk-restore-'))).toEqual([]);
  }, 60_000);

  it('restores of another chain (here: a different Full) do not wait for it', async () => {
    const bin = await slowBtrfs(path.join(sb.dir, 'slow-bin2'), 1.5);
    const first = sh(`sbk-unpack --as c1 ${CHAIN}`, sb, { env: { PATH: `${path.join(ROOT, 'bin')}:${bin}:${process.env.PATH}` } });
    await until(async () => (await readdir(sb.lxcDir)).some((n) => n.startsWith('.sbk-restore-c1-')), 'the first restore to start', 10_000, 100).catch(() => {});
    const other = await sh(`sbk-unpack --as old1 '${FIXTURES}/old_1477297700_Full.tar.gz'`, sb);
    expect(other.exitCode, other.stderr).toBe(0);
    expect((await first).exitCode).toBe(0);
  }, 60_000);
});
