// sbk-unpack --to DIR: a chain of six backups with every kind of change (test/helpers/replay-chain.ts)
// replayed at every point onto an ext4 loop image and onto a tmpfs, each equal to that point's
// snapshot set; the archives given as arguments, as a path list and as bytes on stdin; a target
// that is not empty refused; a corrupt chain leaves nothing; as non-root the tree is written and
// what it lacks said once.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmod, copyFile, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { e2eMode, makeSandbox, sh, type Sandbox } from '../helpers/sandbox.js';
import { makeRichChain, makeScratchFs, volumesDiffs, type ChainPoint, type ScratchFs } from '../helpers/replay-chain.js';

const mode = e2eMode();

describe.skipIf(mode === 'skip')('sbk-unpack --to: replay without BTRFS', () => {
  let sb: Sandbox;
  let ext4: ScratchFs;
  let tmpfs: ScratchFs;
  let points: ChainPoint[] = [];
  const upTo = (i: number) => points.slice(0, i + 1).map((p) => `'${p.archive}'`).join(' ');

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 1024 });
    ext4 = await makeScratchFs('ext4');
    tmpfs = await makeScratchFs('tmpfs');
    points = await makeRichChain(sb);
    expect(points.map((p) => p.name.endsWith('_Full'))).toEqual([true, false, false, false, false, false]);
  });
  afterAll(async () => {
    await ext4?.cleanup();
    await tmpfs?.cleanup();
    await sb?.cleanup();
  });

  it.each(['ext4', 'tmpfs'] as const)('replays every point onto %s equal to its snapshot set', async (kind) => {
    const fs = kind === 'ext4' ? ext4 : tmpfs;
    for (const [i, p] of points.entries()) {
      const to = path.join(fs.mnt, `p${i}`);
      const r = await sh(`sbk-unpack --to '${to}' ${upTo(i)}`, sb);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stderr).toContain(`replayed ${p.name} into ${to}`);
      expect(await volumesDiffs(p.set, to), `${kind} ${p.name}`).toEqual([]);
      expect((await readdir(fs.mnt)).filter((n) => n.startsWith('.sbk-'))).toEqual([]);
    }
  });

  it('takes a path list (sbk-plan) and archive bytes on stdin', async () => {
    const last = points.length - 1;
    const byList = path.join(ext4.mnt, 'by-list');
    const r1 = await sh(`sbk-plan c1 | sbk-unpack --to '${byList}'`, sb);
    expect(r1.exitCode, r1.stderr).toBe(0);
    expect(await volumesDiffs(points[last]!.set, byList)).toEqual([]);
    const byBytes = path.join(tmpfs.mnt, 'by-bytes');
    await mkdir(byBytes); // an empty directory may be the target
    const r2 = await sh(`cat ${upTo(2)} | sbk-unpack --to '${byBytes}'`, sb);
    expect(r2.exitCode, r2.stderr).toBe(0);
    expect(await volumesDiffs(points[2]!.set, byBytes)).toEqual([]);
    expect(await readFile(path.join(byBytes, 'config'), 'utf8')).toContain('lxc.rootfs');
  });

  it('refuses a target that is not empty, and a chain with a gap, leaving nothing', async () => {
    const busy = path.join(ext4.mnt, 'busy');
    await mkdir(busy);
    await writeFile(path.join(busy, 'x'), 'mine');
    const r1 = await sh(`sbk-unpack --to '${busy}' ${upTo(1)}`, sb);
    expect(r1.exitCode).toBe(6);
    expect(r1.stderr).toMatch(/exists and is not empty/);
    expect(await readdir(busy)).toEqual(['x']);
    const gap = path.join(ext4.mnt, 'gap');
    const r2 = await sh(`cat '${points[0]!.archive}' '${points[2]!.archive}' | sbk-unpack --to '${gap}'`, sb);
    expect(r2.exitCode).toBe(3);
    expect((await readdir(ext4.mnt)).filter((n) => n === 'gap' || n.startsWith('.sbk-'))).toEqual([]);
  });

  it('refuses a corrupt archive, leaving nothing', async () => {
    const bad = path.join(tmpfs.mnt, 'corrupt.tar.gz');
    const bytes = await readFile(points[1]!.archive);
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    await writeFile(bad, bytes);
    const to = path.join(tmpfs.mnt, 'from-corrupt');
    const r = await sh(`cat '${points[0]!.archive}' '${bad}' | sbk-unpack --to '${to}'`, sb);
    expect([3, 4]).toContain(r.exitCode);
    expect((await readdir(tmpfs.mnt)).filter((n) => n === 'from-corrupt' || n.startsWith('.sbk-'))).toEqual([]);
  });

  it('as non-root writes the tree and says once what it lacks', async () => {
    // The archives where nobody may read them, a target dir nobody may write.
    const home = path.join(tmpfs.mnt, 'nobody');
    await mkdir(home);
    for (const d of [path.dirname(tmpfs.mnt), tmpfs.mnt]) await chmod(d, 0o711);
    await chmod(home, 0o777);
    const copies: string[] = [];
    for (const p of points.slice(0, 3)) {
      const c = path.join(home, path.basename(p.archive));
      await copyFile(p.archive, c);
      await chmod(c, 0o644);
      copies.push(`'${c}'`);
    }
    const to = path.join(home, 'tree');
    const r = await sh(`setpriv --reuid=65534 --regid=65534 --clear-groups sbk-unpack --to '${to}' ${copies.join(' ')}`, sb);
    expect(r.exitCode, r.stderr).toBe(0);
    const lacks = r.stderr.split('\n').filter((l) => l.includes('not root'));
    expect(lacks.length, r.stderr).toBe(1);
    expect(lacks[0]).toMatch(/the owners of \d+ files.*2 device nodes.*privileged xattrs/);
    expect((await stat(path.join(to, 'rootfs/data.bin'))).uid).toBe(65534);
    // Content, links and modes as the snapshot has them (owners, devices and privileged xattrs aside).
    const set = points[2]!.set;
    const rs = await sh(`rsync -nrlptHc --out-format='%i %n' '${set}/rootfs/' '${to}/rootfs/'`, undefined);
    expect(rs.stdout.split('\n').filter((l) => l && !l.startsWith('skipping non-regular') && !/^\.d\.\.t\.\.\.\.\.\. \.\/$/.test(l))).toEqual([]);
  });
});
