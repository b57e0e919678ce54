// The restore flow on real BTRFS: a chain of four backups with varied changes, each point
// restored (by path list, by arguments, by concatenated stream, as a new name, on a second
// filesystem without the source snapshots) and compared with that backup's snapshots by
// rsync -naHAXc; an existing target refused; --force; corruption, truncation and SIGINT leave
// nothing behind.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { appendFile, chmod, link, mkdir, readdir, readFile, rename, rm, symlink, truncate, utimes, writeFile, copyFile, stat } from 'node:fs/promises';
import { execa } from 'execa';
import path from 'node:path';
import zlib from 'node:zlib';
import { e2eMode, makeSandbox, makeContainer, randomish, sh, treeDiff, BIN, type Sandbox } from '../helpers/sandbox.js';
import { subvolumeInfo } from '../../src/system/btrfs.js';
import { childCommands, until } from '../helpers/wait.js';

const mode = e2eMode();
const VOLUMES = ['rootfs', 'home', 'opt', 'var'];

interface Point {
  archive: string;
  name: string; // c1_<time>[_Full]
  time: number;
  set: string; // the snapshot set: what a restore of this point must equal
}

async function volumeDiffs(set: string, restored: string, volumes = VOLUMES): Promise<string[]> {
  const out: string[] = [];
  for (const v of volumes) for (const d of await treeDiff(path.join(set, v), path.join(restored, v))) out.push(`${v}: ${d}`);
  return out;
}

async function subvolumeCount(sb: Sandbox): Promise<number> {
  const r = await execa('btrfs', ['subvolume', 'list', sb.mnt]);
  return r.stdout.split('\n').filter(Boolean).length;
}

async function leftovers(sb: Sandbox): Promise<string[]> {
  return (await readdir(sb.lxcDir)).filter((n) => n.startsWith('.sbk-restore-'));
}

/** Changes between backups: content, deletes, renames, hardlinks, xattrs, sparse, times, modes. */
const CHANGES: ((c: string) => Promise<void>)[] = [
  async (c) => {
    await appendFile(path.join(c, 'var/log/syslog'), 'after the full\n');
    // In-place overwrite of 4 KiB in the middle of a 1 MiB file: a small delta.
    const fh = await import('node:fs/promises').then((m) => m.open(path.join(c, 'opt/app/data.bin'), 'r+'));
    await fh.write(randomish(4096, 9), 0, 4096, 512 * 1024);
    await fh.close();
    await rm(path.join(c, 'rootfs/etc/file with spaces.conf'));
    await writeFile(path.join(c, 'home/ubuntu/new file'), 'new\n');
    await execa('setfattr', ['-n', 'user.sbk', '-v', 'changed', path.join(c, 'rootfs/etc/hostname')]);
    await chmod(path.join(c, 'home/ubuntu/.bashrc'), 0o600);
  },
  async (c) => {
    await rename(path.join(c, 'opt/app'), path.join(c, 'opt/app-renamed'));
    await rename(path.join(c, 'home/ubuntu/new file'), path.join(c, 'home/ubuntu/renamed file'));
    await link(path.join(c, 'var/log/syslog'), path.join(c, 'var/log/syslog.hardlink'));
    // Extend the sparse file and write far into it.
    await execa('truncate', ['-s', '128M', path.join(c, 'rootfs/usr/sparse.img')]);
    const fh = await import('node:fs/promises').then((m) => m.open(path.join(c, 'rootfs/usr/sparse.img'), 'r+'));
    await fh.write(Buffer.from('tail'), 0, 4, 100 * 1024 * 1024);
    await fh.close();
    const old = new Date('2001-02-03T04:05:06Z');
    await utimes(path.join(c, 'rootfs/etc/hostname'), old, old);
    await execa('setfattr', ['-n', 'user.second', '-v', '2', path.join(c, 'var/log')]);
  },
  async (c) => {
    await rm(path.join(c, 'var/cache'), { recursive: true });
    await rm(path.join(c, 'rootfs/etc/tool-link'));
    await writeFile(path.join(c, 'rootfs/etc/tool-link'), 'now a file\n');
    await symlink('renamed file', path.join(c, 'home/ubuntu/a link'));
    await execa('setfattr', ['-x', 'user.sbk', path.join(c, 'rootfs/etc/hostname')]);
    await writeFile(path.join(c, 'opt/big.bin'), randomish(2 * 1024 * 1024, 3));
    await mkdir(path.join(c, 'rootfs/srv/deep/er'), { recursive: true });
    await writeFile(path.join(c, 'rootfs/srv/deep/er/x'), 'x');
    await rm(path.join(c, 'rootfs/usr/bin/tool')); // the hardlink's other name stays
    // Meta files change too: the restore takes the last archive's.
    await writeFile(path.join(c, 'fstab'), '# changed\n');
  },
];

describe.skipIf(mode === 'skip')('restore flow on loopback BTRFS', () => {
  let sb: Sandbox;
  let other: Sandbox;
  const points: Point[] = [];

  const backup = async () => {
    // Every point is compared with its snapshot set afterwards: keep them all (the default keeps 2).
    const r = await sh('sbk-snap --keep-snapshots 100 c1 | sbk-send | sbk-pack', sb);
    expect(r.exitCode, r.stderr).toBe(0);
    const archive = r.stdout.trim();
    const name = path.basename(archive, '.tar.gz');
    const m = /^c1_(\d+)(_Full)?$/.exec(name)!;
    points.push({ archive, name, time: Number(m[1]), set: path.join(sb.backupDir, 'c1', `${m[1]}${m[2] ?? ''}`) });
  };

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 1024 });
    other = await makeSandbox({ sizeMiB: 512 });
    const c = await makeContainer(sb, 'c1');
    await backup();
    for (const change of CHANGES) {
      await change(c);
      await backup();
    }
    expect(points.map((p) => p.name.endsWith('_Full'))).toEqual([true, false, false, false]);
  });
  afterAll(async () => {
    await sb?.cleanup();
    await other?.cleanup();
  });

  it('plans each point as its Full plus the incrementals up to it', async () => {
    for (const [i, p] of points.entries()) {
      const r = await sh(`sbk-plan c1 --at ${p.time}`, sb);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout.split('\n')).toEqual(points.slice(0, i + 1).map((x) => x.archive));
    }
  });

  it('restores every point of the chain bit-exact under a new name (sbk-plan | sbk-unpack)', async () => {
    for (const [i, p] of points.entries()) {
      const before = await subvolumeCount(sb);
      const r = await sh(`sbk-plan c1 --at ${p.time} | sbk-unpack --as p${i}`, sb);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stderr).toContain(`restored ${p.name} as p${i}`);
      const dir = path.join(sb.lxcDir, `p${i}`);
      expect(await volumeDiffs(p.set, dir)).toEqual([]);
      // The volume roots too (volumeDiffs, like treeDiff, passes over the root's own line):
      // an incremental's receive makes a new root, which the stream does not touch when the
      // root did not change. Same mtime, mode and owner as the snapshot's, to the nanosecond.
      for (const v of VOLUMES) {
        const [a, b] = [await stat(path.join(p.set, v), { bigint: true }), await stat(path.join(dir, v), { bigint: true })];
        expect([b.mtimeNs, b.mode, b.uid, b.gid], `${p.name} ${v}`).toEqual([a.mtimeNs, a.mode, a.uid, a.gid]);
        const rs = await execa('rsync', ['-naHAXc', '--numeric-ids', '--delete', '--out-format=%i %n', `${path.join(p.set, v)}/`, `${path.join(dir, v)}/`]);
        expect(rs.stdout, `${p.name} ${v}`).toBe('');
      }
      // Only the live volumes remain: the received subvolumes and the temp dir are gone.
      expect(await subvolumeCount(sb)).toBe(before + VOLUMES.length);
      expect(await leftovers(sb)).toEqual([]);
      // Live volumes: writable, no Received UUID (so they can be snapshotted and sent again).
      const info = await subvolumeInfo(path.join(dir, 'rootfs'));
      expect(info.readonly).toBe(false);
      expect(info.receivedUuid).toBeNull();
      await writeFile(path.join(dir, 'rootfs/writable'), 'yes');
      await rm(path.join(dir, 'rootfs/writable'));
    }
    // The sparse file stayed sparse.
    const st = await stat(path.join(sb.lxcDir, 'p3/rootfs/usr/sparse.img'));
    expect(st.size).toBe(128 * 1024 * 1024);
    expect(st.blocks * 512).toBeLessThan(4 * 1024 * 1024);
  });

  it('rewrites the config for the new name: paths, utsname, a fresh MAC and the veth name from it', async () => {
    const cfg = await readFile(path.join(sb.lxcDir, 'p3/config'), 'utf8');
    const dir = path.join(sb.lxcDir, 'p3');
    expect(cfg).toContain(`lxc.rootfs = ${dir}/rootfs\n`);
    expect(cfg).toContain(`lxc.rootfs.mount = ${dir}/rootfs\n`);
    expect(cfg).toContain(`lxc.mount.entry = ${dir}/home home none bind,rw 0 0\n`);
    expect(cfg).toContain(`lxc.mount = ${dir}/fstab\n`);
    expect(cfg).toContain('lxc.utsname = p3\n');
    expect(cfg).not.toContain('/lxc/c1/');
    const mac = /lxc\.network\.hwaddr = (\S+)/.exec(cfg)![1]!;
    expect(mac).not.toBe('00:16:3e:5a:2b:01');
    expect(parseInt(mac.slice(0, 2), 16) & 0x03).toBe(0x02); // locally administered, unicast
    expect(cfg).toContain(`lxc.network.veth.pair = veth${mac.split(':').slice(3).join('')}\n`);
    expect(await readFile(path.join(dir, 'fstab'), 'utf8')).toBe('# changed\n');
    // Other containers' MACs differ from each other too.
    const mac2 = /lxc\.network\.hwaddr = (\S+)/.exec(await readFile(path.join(sb.lxcDir, 'p2/config'), 'utf8'))![1]!;
    expect(mac2).not.toBe(mac);
  });

  it('restores from archive arguments and from a concatenated stream', async () => {
    const args = points.map((p) => `'${p.archive}'`).join(' ');
    const r1 = await sh(`sbk-unpack --as byargs ${args}`, sb);
    expect(r1.exitCode, r1.stderr).toBe(0);
    expect(await volumeDiffs(points[3]!.set, path.join(sb.lxcDir, 'byargs'))).toEqual([]);
    const r2 = await sh(`sbk-plan c1 --at ${points[2]!.time} | xargs -d '\\n' cat | sbk-unpack --as bycat`, sb);
    expect(r2.exitCode, r2.stderr).toBe(0);
    expect(await volumeDiffs(points[2]!.set, path.join(sb.lxcDir, 'bycat'))).toEqual([]);
    expect(await leftovers(sb)).toEqual([]);
  });

  it('restores the same name on another filesystem that has none of the snapshots', async () => {
    const r = await sh(`sbk-plan c1 --dir '${sb.backupDir}' | sbk-unpack`, other);
    expect(r.exitCode, r.stderr).toBe(0);
    const dir = path.join(other.lxcDir, 'c1');
    expect(await volumeDiffs(points[3]!.set, dir)).toEqual([]);
    const cfg = await readFile(path.join(dir, 'config'), 'utf8');
    // Same name: identity kept, paths moved to this LXC dir.
    expect(cfg).toContain('lxc.network.hwaddr = 00:16:3e:5a:2b:01\n');
    expect(cfg).toContain('lxc.utsname = c1\n');
    expect(cfg).toContain(`lxc.rootfs = ${dir}/rootfs\n`);
    expect(cfg).not.toContain(sb.lxcDir);
    expect(await leftovers(other)).toEqual([]);
  });

  it('refuses an existing target and leaves it untouched; --force replaces it once the new one is complete', async () => {
    const c1 = path.join(sb.lxcDir, 'c1');
    const cfgBefore = await readFile(path.join(c1, 'config'), 'utf8');
    const subsBefore = await subvolumeCount(sb);
    const r = await sh('sbk-plan c1 | sbk-unpack', sb);
    expect(r.exitCode).toBe(6);
    expect(r.stderr.trim()).toBe(
      `sbk-unpack: container c1 already exists at ${c1}; restore under another name with --as NAME, or replace it with --force`,
    );
    expect(await readFile(path.join(c1, 'config'), 'utf8')).toBe(cfgBefore);
    expect(await subvolumeCount(sb)).toBe(subsBefore);
    expect(await leftovers(sb)).toEqual([]);

    // p3 holds point 3; replace it with point 0.
    const f = await sh(`sbk-plan c1 --at ${points[0]!.time} | sbk-unpack --as p3 --force`, sb);
    expect(f.exitCode, f.stderr).toBe(0);
    expect(f.stderr).toContain('replaced the old one');
    expect(await volumeDiffs(points[0]!.set, path.join(sb.lxcDir, 'p3'))).toEqual([]);
    expect(await subvolumeCount(sb)).toBe(subsBefore); // the old volumes are gone
    expect(await leftovers(sb)).toEqual([]);
  });

  it('refuses archives out of order or of two chains before receiving anything', async () => {
    const [f, i1, i2] = points;
    const skip = await sh(`sbk-unpack --as x '${f!.archive}' '${i2!.archive}'`, sb);
    expect(skip.exitCode).toBe(3);
    expect(skip.stderr).toContain(`${i2!.name} cannot follow ${f!.name}: the parent of ${i2!.name} is ${i1!.name}`);
    const incr = await sh(`sbk-unpack --as x '${i1!.archive}'`, sb);
    expect(incr.exitCode).toBe(3);
    expect(incr.stderr).toContain('is an incremental backup: a restore starts at its Full');
    expect(await leftovers(sb)).toEqual([]);
    expect(await readdir(sb.lxcDir)).not.toContain('x');
  });

  describe('failures leave nothing behind', () => {
    let bad: string;
    beforeAll(async () => {
      bad = path.join(sb.dir, 'bad');
      await mkdir(bad);
    });

    /** Copies the chain to `bad/`, letting `damage` change the copy of archive `i`. */
    const damagedChain = async (i: number, damage: (tarBytes: Buffer) => Buffer | Promise<Buffer>) => {
      await rm(bad, { recursive: true, force: true });
      await mkdir(bad);
      for (const p of points) await copyFile(p.archive, path.join(bad, path.basename(p.archive)));
      const target = path.join(bad, path.basename(points[i]!.archive));
      const tarBytes = zlib.gunzipSync(await readFile(target));
      await writeFile(target, zlib.gzipSync(await damage(Buffer.from(tarBytes)), { level: 1 }));
    };

    const expectClean = async (name: string, before: number) => {
      expect(await readdir(sb.lxcDir)).not.toContain(name);
      expect(await leftovers(sb)).toEqual([]);
      expect(await subvolumeCount(sb)).toBe(before);
    };

    it('a flipped byte inside a delta: exit 4 naming the entry, nothing left', async () => {
      await damagedChain(2, (t) => {
        // The first delta entry of archive 2: flip a byte well inside its data.
        const at = t.indexOf(Buffer.from('btrfs-stream\0'));
        t[at + 600] ^= 0x40;
        return t;
      });
      const before = await subvolumeCount(sb);
      const r = await sh(`sbk-plan c1 --dir '${bad}' | sbk-unpack --as damaged`, sb);
      expect(r.exitCode).toBe(4);
      expect(r.stderr).toMatch(new RegExp(`${points[2]!.name}: rootfs\\.delta: corrupt send stream at byte offset \\d+`));
      await expectClean('damaged', before);
    });

    it('a sha256 that fails only at the trailer, after every delta was received: exit 4, nothing left', async () => {
      await damagedChain(3, (t) => {
        // Change one hex digit of the trailer's whole-delta sha256 of var (same length: the
        // tar stays well-formed and every delta is received before the check fails).
        const s = t.toString('latin1');
        const at = s.lastIndexOf('"var": {');
        const sha = s.indexOf('"sha256": "', at) + 11;
        t[sha] = t[sha] === 0x30 ? 0x31 : 0x30;
        return t;
      });
      const before = await subvolumeCount(sb);
      const r = await sh(`sbk-plan c1 --dir '${bad}' | sbk-unpack --as trailer`, sb);
      expect(r.exitCode).toBe(4);
      expect(r.stderr).toContain(`${points[3]!.name}: the delta of volume var fails its check`);
      await expectClean('trailer', before);
    });

    it('a truncated archive: exit 4, nothing left', async () => {
      await rm(bad, { recursive: true, force: true });
      await mkdir(bad);
      for (const p of points) await copyFile(p.archive, path.join(bad, path.basename(p.archive)));
      const last = path.join(bad, path.basename(points[3]!.archive));
      await truncate(last, Math.floor((await stat(last)).size * 0.6));
      const before = await subvolumeCount(sb);
      const r = await sh(`cat ${points.map((p) => `'${path.join(bad, path.basename(p.archive))}'`).join(' ')} | sbk-unpack --as cut`, sb);
      expect(r.exitCode).toBe(4);
      await expectClean('cut', before);
    });

    it('SIGINT during a restore: exit 130, nothing left', async () => {
      const before = await subvolumeCount(sb);
      const child = execa(BIN('sbk-unpack'), ['--as', 'sig'], { env: sb.env, reject: false, stdin: 'pipe' });
      // The Full, then silence: the restore waits for the next archive.
      child.stdin!.write(await readFile(points[0]!.archive));
      const received = async () => {
        const tmp = (await leftovers(sb))[0];
        const done = tmp ? await readdir(path.join(sb.lxcDir, tmp, 'r0')).catch(() => [] as string[]) : [];
        return done.length === VOLUMES.length;
      };
      await until(received, 'the restore to start', 30_000, 100);
      // The Full applied: no btrfs receive runs any more, sbk-unpack waits on stdin.
      await until(async () => !(await childCommands(child.pid!)).some((c) => /\bbtrfs\b/.test(c)), 'the receives to end', 30_000);
      child.kill('SIGINT');
      const r = await child;
      expect(r.exitCode).toBe(130);
      expect(r.stderr).toContain('interrupted, cleaning up');
      await expectClean('sig', before);
    });
  });

  it('restores archives of the original Subutai layout (Full and incremental), warning that they carry no checksums', async () => {
    // Made as the original tool made them: btrfs send [-p] of each volume into <vol>.delta,
    // the container's files under meta/, tar czf; named <c>_<time>[_Full].tar.gz.
    const legacyDir = path.join(sb.dir, 'legacy');
    await mkdir(legacyDir, { recursive: true });
    const make = async (p: Point, parent: Point | undefined) => {
      const stage = path.join(sb.dir, `stage-${p.time}`);
      await mkdir(path.join(stage, 'meta'), { recursive: true });
      for (const v of VOLUMES)
        await execa('btrfs', ['send', '-q', ...(parent ? ['-p', path.join(parent.set, v)] : []), '-f', path.join(stage, `${v}.delta`), path.join(p.set, v)]);
      await copyFile(path.join(sb.lxcDir, 'c1/config'), path.join(stage, 'meta/config'));
      const out = path.join(legacyDir, `c1_${p.time}${parent ? '' : '_Full'}.tar.gz`);
      await execa('tar', ['czf', out, '-C', stage, ...VOLUMES.map((v) => `${v}.delta`), 'meta']);
      return out;
    };
    await make(points[0]!, undefined);
    await make(points[1]!, points[0]!);
    const plan = await sh(`sbk-plan c1 --dir '${legacyDir}'`, sb);
    expect(plan.exitCode, plan.stderr).toBe(0);
    expect(plan.stdout.split('\n')).toHaveLength(2);
    expect(plan.stderr).toContain('original Subutai tool');
    const r = await sh(`sbk-plan c1 --dir '${legacyDir}' | sbk-unpack --as old`, sb);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/c1_\d+_Full is an archive of the original Subutai tool: it carries no checksums/);
    expect(await volumeDiffs(points[1]!.set, path.join(sb.lxcDir, 'old'))).toEqual([]);
    expect(await readFile(path.join(sb.lxcDir, 'old/config'), 'utf8')).toContain('lxc.utsname = old\n');
    expect(await leftovers(sb)).toEqual([]);
  });

  it('--verify checks a chain without writing anything, and names a failing entry', async () => {
    const before = await subvolumeCount(sb);
    const ok = await sh(`sbk-plan c1 | sbk-unpack --verify`, sb);
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(ok.stderr.split('\n').filter((l: string) => / ok \(4 volumes/.test(l))).toHaveLength(4);
    const bytes = await sh(`cat ${points.map((p) => `'${p.archive}'`).join(' ')} | sbk-unpack --verify -q`, sb);
    expect(bytes.exitCode, bytes.stderr).toBe(0);
    expect(bytes.stderr).toBe('');
    expect(await subvolumeCount(sb)).toBe(before);
  });
});
