// What a backup holds beside the volumes' send streams, and what it cannot hold, on real BTRFS:
// the meta files of the container directory (config, fstab, small files; never a log named by the
// config, a stray subvolume, a socket or a big file), nested subvolumes inside a volume (not in
// `btrfs send`: warned about, recorded in the manifest, their directories made on restore), and a
// path too long for `btrfs send` (named in the error).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { appendFile, mkdir, readFile, stat, writeFile, readdir } from 'node:fs/promises';
import { execa } from 'execa';
import path from 'node:path';
import { ROOT, e2eMode, makeSandbox, makeContainer, randomish, sh, treeDiff, unmount, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();

async function manifestOf(archive: string): Promise<Record<string, unknown>> {
  const r = await execa('tar', ['xzOf', archive, 'manifest.json']);
  return JSON.parse(r.stdout) as Record<string, unknown>;
}

async function listing(archive: string): Promise<string[]> {
  return (await execa('tar', ['tzf', archive])).stdout.split('\n').filter(Boolean);
}

describe.skipIf(mode === 'skip')('what a backup holds beside the volumes', () => {
  let sb: Sandbox;

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 600 });
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  it('archives the config, fstab and small files, and leaves out logs, subvolumes, sockets and big files, saying so with -v', async () => {
    const c = await makeContainer(sb, 'm1');
    // A log named by the config (LXC 2 key) that grew to 70 MiB, and a console log (LXC 3+ key).
    await appendFile(path.join(c, 'config'), `lxc.logfile = ${c}/m1.log\nlxc.console.logfile = ${c}/console.log\n`);
    await execa('truncate', ['-s', '70M', path.join(c, 'm1.log')]);
    await writeFile(path.join(c, 'm1.log'), 'lxc start\n', { flag: 'r+' });
    await writeFile(path.join(c, 'console.log'), 'login: \n');
    // A subvolume dropped from the config, with data in it.
    await execa('btrfs', ['subvolume', 'create', path.join(c, 'old-data')]);
    await writeFile(path.join(c, 'old-data/blob'), randomish(3 * 1024 * 1024, 3));
    // A big file (a core dump) and a socket.
    await writeFile(path.join(c, 'core'), randomish(3 * 1024 * 1024, 4));
    await execa('/usr/bin/python3', ['-c', `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(path.join(c, 'ctl.sock'))})`]);
    // Small files a restore needs stay in, also in a directory.
    await mkdir(path.join(c, 'keys'));
    await writeFile(path.join(c, 'keys/id.pub'), 'ssh-ed25519 AAAA test\n');

    // A filesystem mounted there (a tmpfs with a file in it).
    await mkdir(path.join(c, 'scratch'));
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'sbk-test', path.join(c, 'scratch')]);
    let r!: Awaited<ReturnType<typeof sh>>;
    try {
      await writeFile(path.join(c, 'scratch/tmp'), 'x');
      r = await sh('sbk-snap m1 | sbk-send -v | sbk-pack', sb);
    } finally {
      await execa('umount', [path.join(c, 'scratch')]);
      await execa('rmdir', [path.join(c, 'scratch')]);
    }
    expect(r.stderr).not.toMatch(/too large|corrupt/);
    expect(r.exitCode).toBe(0);
    const archive = r.stdout.trim();
    const names = await listing(archive);
    expect(names.filter((n) => n.startsWith('meta/')).sort()).toEqual(['meta/config', 'meta/fstab', 'meta/keys/', 'meta/keys/id.pub']);
    expect(r.stderr).toMatch(/scratch.*mount point/);
    // 1 MiB of random data in opt; none of the 6 MiB left out.
    expect((await stat(archive)).size).toBeLessThan(2.5 * 1024 * 1024);
    expect(r.stderr).toMatch(/m1\.log.*lxc\.logfile/);
    expect(r.stderr).toMatch(/console\.log.*lxc\.console\.logfile/);
    expect(r.stderr).toMatch(/old-data.*subvolume/);
    expect(r.stderr).toMatch(/core.*larger than/);
    expect(r.stderr).toMatch(/ctl\.sock.*socket/);

    // An incremental stays small although the log keeps growing.
    await appendFile(path.join(c, 'm1.log'), 'more\n'.repeat(100000));
    const i = await sh('sbk-snap m1 | sbk-send | sbk-pack', sb);
    expect(i.exitCode).toBe(0);
    expect((await stat(i.stdout.trim())).size).toBeLessThan(64 * 1024);

    const u = await sh('sbk-plan m1 | sbk-unpack --as m1r', sb);
    expect(u.stderr).not.toMatch(/warning/);
    expect(u.exitCode).toBe(0);
    const back = path.join(sb.lxcDir, 'm1r');
    expect((await readdir(back)).sort()).toEqual(['config', 'fstab', 'home', 'keys', 'opt', 'rootfs', 'var']);
    expect(await readFile(path.join(back, 'config'), 'utf8')).toMatch(/lxc\.utsname = m1r/);
    expect(await readFile(path.join(back, 'keys/id.pub'), 'utf8')).toBe('ssh-ed25519 AAAA test\n');
  });

  it('warns about nested subvolumes, records them in the manifest and makes their directories on restore', async () => {
    const c = await makeContainer(sb, 'n1');
    await mkdir(path.join(c, 'rootfs/var/lib'), { recursive: true });
    await execa('btrfs', ['subvolume', 'create', path.join(c, 'rootfs/var/lib/docker')]);
    await execa('chmod', ['0711', path.join(c, 'rootfs/var/lib/docker')]);
    await writeFile(path.join(c, 'rootfs/var/lib/docker/image'), 'layer\n');
    await execa('btrfs', ['subvolume', 'create', path.join(c, 'var/machines')]);

    // btrfs through a wrapper that logs its command lines: sbk-send asks one `subvolume list` of
    // the filesystem for every volume's nested subvolumes, not a `list -o` (and a `show`) each.
    const wrapDir = path.join(sb.dir, 'btrfs-log');
    const btrfsLog = path.join(wrapDir, 'log');
    const realBtrfs = (await execa('bash', ['-c', 'command -v btrfs'])).stdout.trim();
    await mkdir(wrapDir, { recursive: true });
    await writeFile(path.join(wrapDir, 'btrfs'), `#!/bin/sh\necho "$(tr '\\0' ' ' </proc/$PPID/cmdline):: $*" >> '${btrfsLog}'\nexec '${realBtrfs}' "$@"\n`, { mode: 0o755 });
    const r = await sh('sbk-snap n1 | sbk-send | sbk-pack', sb, { env: { PATH: `${path.join(ROOT, 'bin')}:${wrapDir}:${process.env.PATH}` } });
    expect(r.exitCode).toBe(0);
    const bySend = (await readFile(btrfsLog, 'utf8')).split('\n').filter((l) => /bin\/sbk-send .*:: /.test(l)).map((l) => l.split(':: ')[1]);
    expect(bySend.filter((l) => /^subvolume (list|show)/.test(l))).toEqual([expect.stringMatching(/^subvolume list -a -u -q \/\S+$/)]);
    const warnings = r.stderr.split('\n').filter((l) => /nested subvolume/.test(l));
    expect(warnings).toHaveLength(2);
    expect(warnings.join('\n')).toMatch(/rootfs.*var\/lib\/docker/);
    expect(warnings.join('\n')).toMatch(/var.*machines/);
    const m = await manifestOf(r.stdout.trim());
    expect(m.nestedSubvolumes).toEqual([
      { volume: 'rootfs', path: 'var/lib/docker', mode: 0o711, uid: 0, gid: 0 },
      { volume: 'var', path: 'machines', mode: 0o755, uid: 0, gid: 0 },
    ]);

    const u = await sh('sbk-plan n1 | sbk-unpack --as n1r', sb);
    expect(u.exitCode).toBe(0);
    expect(u.stderr).toMatch(/rootfs.*var\/lib\/docker.*empty directory/);
    const back = path.join(sb.lxcDir, 'n1r');
    const d = await stat(path.join(back, 'rootfs/var/lib/docker'));
    expect(d.isDirectory()).toBe(true);
    expect(d.mode & 0o7777).toBe(0o711);
    expect(await readdir(path.join(back, 'rootfs/var/lib/docker'))).toEqual([]);
    expect((await stat(path.join(back, 'var/machines'))).isDirectory()).toBe(true);
    // The oracle: the restored volumes are the snapshots but for the nested subvolumes' directories
    // (the snapshot holds a placeholder of mode 0755, the restore a new directory of the mode the
    // subvolume had); their parents keep their times.
    const set = path.join(sb.backupDir, 'n1', (await readdir(path.join(sb.backupDir, 'n1')))[0]!);
    expect(await treeDiff(path.join(set, 'rootfs'), path.join(back, 'rootfs'))).toEqual([expect.stringMatching(/^\.d\.\.[.t]p\.+ var\/lib\/docker\/$/)]);
    expect((await treeDiff(path.join(set, 'var'), path.join(back, 'var'))).filter((l) => !/ machines\/$/.test(l))).toEqual([]);
  });

  it('finds nested subvolumes when the LXC dir is a subvolume mounted with subvol= and another subvolume has a path like the volume\'s', async () => {
    // The LXC dir seen through a second mount of its subvolume: paths from the filesystem's top
    // level (lxc/s1/rootfs) no longer end the real paths (<view>/s1/rootfs), while a decoy
    // top-level s1/rootfs, with a child of its own, does.
    const view = path.join(sb.dir, 'view');
    await mkdir(view);
    const dev = (await execa('findmnt', ['-no', 'SOURCE', sb.mnt])).stdout.trim();
    await execa('mount', ['-o', `subvol=${path.relative(sb.mnt, sb.lxcDir)}`, dev, view]);
    try {
      await mkdir(path.join(sb.mnt, 's1'));
      await execa('btrfs', ['subvolume', 'create', path.join(sb.mnt, 's1/rootfs')]);
      await execa('btrfs', ['subvolume', 'create', path.join(sb.mnt, 's1/rootfs/decoy')]);
      const viewSb = { ...sb, lxcDir: view, backupDir: path.join(view, 'backups'), env: { SBK_LXC_DIR: view, SBK_BACKUP_DIR: path.join(view, 'backups') } };
      const c = await makeContainer(viewSb, 's1', { volumes: ['rootfs'], content: false });
      await mkdir(path.join(c, 'rootfs/srv'));
      await execa('btrfs', ['subvolume', 'create', path.join(c, 'rootfs/srv/inner')]);
      const r = await sh('sbk-snap s1 | sbk-send | sbk-pack', viewSb);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/s1.*rootfs.*nested subvolume srv\/inner is not backed up/);
      expect((await manifestOf(r.stdout.trim())).nestedSubvolumes).toEqual([{ volume: 'rootfs', path: 'srv/inner', mode: 0o755, uid: 0, gid: 0 }]);
    } finally {
      await unmount(view);
    }
  });

  it('names the volume and the path when a path is too long for btrfs send', async () => {
    const c = await makeContainer(sb, 'd1', { volumes: ['rootfs'], content: false });
    // 21 levels of 200-character names: a path of over 4096 bytes, made one `cd` at a time.
    const name = 'x'.repeat(200);
    await execa('bash', ['-c', `cd "$1" && for i in $(seq 1 21); do mkdir "$2" && cd "$2" || exit 1; done && echo deep > leaf`, 'bash', path.join(c, 'rootfs'), name]);
    const r = await sh('sbk-snap d1 | sbk-send | sbk-pack', sb);
    expect(r.exitCode).not.toBe(0);
    const line = r.stderr.split('\n').find((l) => /sbk-send/.test(l)) ?? '';
    expect(line).toMatch(/rootfs/);
    expect(line).toMatch(/longer than|too long/);
    expect(line).toContain(`${name.slice(0, 150)}`); // the path, cut in its middle to keep the line short
    // The first path that reaches PATH_MAX: the 21st directory, 21 * 201 - 1 bytes.
    expect(line).toMatch(/4220 bytes/);
  });
});
