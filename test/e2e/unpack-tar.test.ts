// sbk-unpack --tar, --list and --path on real BTRFS: a chain of backups with varied changes
// (ACLs, file capabilities, device nodes, names that are not UTF-8, owners, hard links, renames,
// sparse files), every point written as a tar and extracted by GNU tar equals that point's
// snapshots as the container sees them; --path gives exactly the files asked for; --list
// matches `find` on the snapshots; a path that is not there fails naming it; the scratch tree
// is gone after every run.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { link, mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, sh, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();
const MOUNTED = ['home', 'opt', 'var'];

interface Point {
  time: number;
  set: string;
}

const CHANGES: ((c: string) => Promise<void>)[] = [
  async (c) => {
    await writeFile(path.join(c, 'rootfs/etc/hostname'), 'changed\n');
    await execa('bash', [
      '-c',
      `set -e; cd "$1"
       setfacl -m u:1234:r rootfs/etc/hostname; setfacl -d -m g:2345:rx home/ubuntu
       setcap cap_net_raw+ep rootfs/usr/bin/tool
       mknod rootfs/etc/null c 1 3; touch "rootfs/etc/$(printf 'bad\\xff name')"
       mkdir -p opt/srv/www; echo page > opt/srv/www/index.html; chown -R 1000:1001 opt/srv`,
      'x',
      c,
    ]);
  },
  async (c) => {
    await rename(path.join(c, 'opt/srv'), path.join(c, 'opt/moved'));
    await link(path.join(c, 'var/log/syslog'), path.join(c, 'var/log/syslog.1'));
    await rm(path.join(c, 'rootfs/etc/file with spaces.conf'));
    await execa('dd', ['if=/dev/urandom', `of=${path.join(c, 'rootfs/usr/sparse.img')}`, 'bs=4k', 'count=1', 'seek=4000', 'conv=notrunc', 'status=none']);
  },
];

describe.skipIf(mode === 'skip')('sbk-unpack --tar, --list, --path', () => {
  let sb: Sandbox;
  let scratch: string;
  const points: Point[] = [];

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 1024 });
    scratch = path.join(sb.mnt, 'scratch');
    await mkdir(scratch);
    const c = await makeContainer(sb, 'c1');
    const backup = async () => {
      const r = await sh('sbk-snap --keep-snapshots 100 c1 | sbk-send | sbk-pack', sb);
      expect(r.exitCode, r.stderr).toBe(0);
      const m = /c1_(\d+)(_Full)?\.tar\.gz$/.exec(r.stdout.trim())!;
      points.push({ time: Number(m[1]), set: path.join(sb.backupDir, 'c1', `${m[1]}${m[2] ?? ''}`) });
    };
    await backup();
    for (const change of CHANGES) {
      await change(c);
      await backup();
    }
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  const unpack = (p: Point, opts: string) => sh(`sbk-plan c1 --at ${p.time} | sbk-unpack --tmp '${scratch}' ${opts}`, sb);
  const noScratchLeft = async () => expect(await readdir(scratch)).toEqual([]);

  /** rsync of a snapshot volume against where the tar put it: the differences. */
  const diff = async (from: string, to: string, exclude: string[] = []) => {
    const r = await execa('rsync', ['-naHAXc', '--numeric-ids', '--delete', ...exclude.map((e) => `--exclude=/${e}`), '--out-format=%i %n', `${from}/`, `${to}/`]);
    return r.stdout.split('\n').filter((l) => l !== '' && !/^\.d\.\.t\.\.\.\.\.\. \.\/$/.test(l));
  };

  it('writes every point as a tar that GNU tar extracts equal to its snapshots, volumes at their mount points', async () => {
    for (const [i, p] of points.entries()) {
      const tarFile = path.join(sb.dir, `p${i}.tar`);
      const r = await unpack(p, `--tar > '${tarFile}'`);
      expect(r.exitCode, r.stderr).toBe(0);
      const got = path.join(sb.dir, `got${i}`);
      await mkdir(got);
      const x = await execa('tar', ['-x', '--xattrs', '--xattrs-include=*', '--acls', '--numeric-owner', '-p', '-f', tarFile, '-C', got], { reject: false });
      expect(x.exitCode, x.stderr).toBe(0);
      expect(await diff(path.join(p.set, 'rootfs'), got, MOUNTED), `point ${i} rootfs`).toEqual([]);
      for (const v of MOUNTED) expect(await diff(path.join(p.set, v), path.join(got, v)), `point ${i} ${v}`).toEqual([]);
      const [a, b] = [await stat(path.join(p.set, 'rootfs/usr/sparse.img')), await stat(path.join(got, 'usr/sparse.img'))];
      expect([b.size, b.blocks]).toEqual([a.size, a.blocks]);
      expect((await stat(path.join(got, 'usr/bin/tool-hardlink'))).nlink).toBe((await stat(path.join(p.set, 'rootfs/usr/bin/tool-hardlink'))).nlink);
      await noScratchLeft();
      await rm(got, { recursive: true });
    }
  });

  it('--path gives exactly the files asked for, a single file to stdout with tar -xO', async () => {
    const last = points[points.length - 1]!;
    const r = await unpack(last, "--tar --path /etc/hostname --path /opt/moved | tar -t");
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.split('\n').sort()).toEqual(['./etc/hostname', './opt/moved/', './opt/moved/www/', './opt/moved/www/index.html']);
    const one = await unpack(points[0]!, '--tar --path /etc/hostname | tar -xO');
    expect(one.exitCode, one.stderr).toBe(0);
    expect(one.stdout).toBe('c1'); // execa drops the last newline
    await noScratchLeft();
  });

  it('--list --json matches find on the snapshots', async () => {
    const last = points[points.length - 1]!;
    const r = await unpack(last, '--list --json');
    expect(r.exitCode, r.stderr).toBe(0);
    const listed = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { path: string; pathBase64?: string; type: string; uid: number; size: number })
      .map((f) => `${f.type} ${f.uid} ${f.type === 'file' ? f.size : '-'} ${f.pathBase64 ? Buffer.from(f.pathBase64, 'base64').toString('latin1') : Buffer.from(f.path).toString('latin1')}`)
      .sort();
    const found = await execa(
      'bash',
      [
        '-c',
        `cd "$1/rootfs" && find . \\( -path ./home -o -path ./opt -o -path ./var \\) -prune -o -printf '%y %U %s %p\\n'
         for v in home opt var; do (cd "$1/$v" && find . -printf "%y %U %s /$v/%P\\n"); done`,
        'x',
        last.set,
      ],
      { encoding: 'buffer' },
    );
    const kinds: Record<string, string> = { f: 'file', d: 'dir', l: 'symlink', c: 'chr', b: 'blk', p: 'fifo', s: 'sock' };
    const expected = Buffer.from(found.stdout)
      .toString('latin1')
      .split('\n')
      .filter(Boolean)
      .map((l) => {
        const [y, uid, size, ...rest] = l.split(' ');
        const p = rest.join(' ').replace(/^\.(\/|$)/, '/').replace(/\/$/, (m, o: number) => (o === 0 ? m : ''));
        return `${kinds[y!]} ${uid} ${y === 'f' ? size : '-'} ${p}`;
      })
      .sort();
    expect(listed).toEqual(expected);
    await noScratchLeft();
  });

  it('--verify finds every incremental of the chain applies to the tree its parent leaves', async () => {
    const r = await sh(`sbk-plan c1 | sbk-unpack --verify`, sb);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr.match(/: ok /g)).toHaveLength(points.length);
  });

  it('a --path that is not there at that point fails naming it (exit 5), writes nothing, leaves no scratch', async () => {
    const r = await unpack(points[0]!, '--tar --path /opt/moved > /dev/null');
    expect(r.exitCode).toBe(5);
    expect(r.stderr).toContain('--path /opt/moved: no such file or directory at this point');
    const l = await unpack(points[0]!, '--list --path /nowhere');
    expect(l.exitCode).toBe(5);
    expect(l.stdout).toBe('');
    await noScratchLeft();
  });
});
