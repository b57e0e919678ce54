// The backup flow on real BTRFS: sbk-snap | sbk-send | sbk-pack, full and incremental, and
// bad input of every kind (unknown containers, volumes that are not subvolumes, malformed
// records, the wrong stream, a terminal, a cut stream, a full disk). Archives are restored by
// hand (tar + cat + btrfs receive) and compared with the snapshots by rsync -naHAXc.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdtemp, mkdir, readdir, readFile, writeFile, rm, stat, appendFile, rename, symlink } from 'node:fs/promises';
import { execa } from 'execa';
import os from 'node:os';
import path from 'node:path';
import { e2eMode, makeSandbox, makeContainer, sh, treeDiff, unmount, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();
const VOLUMES = ['rootfs', 'home', 'opt', 'var'];

async function ls(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).sort();
}

/** Extracts an archive and receives each volume's delta by hand into `into`. */
async function receiveByHand(archive: string, into: string): Promise<void> {
  const x = await mkdtemp(path.join(os.tmpdir(), 'sbk-x-'));
  try {
    await execa('tar', ['xzf', archive, '-C', x]);
    await mkdir(into, { recursive: true });
    for (const v of VOLUMES) {
      await execa('bash', ['-o', 'pipefail', '-c', `cat ${x}/${v}.delta* | btrfs receive -q "${into}"`]);
    }
  } finally {
    await rm(x, { recursive: true, force: true });
  }
}

describe.skipIf(mode === 'skip')('backup flow on loopback BTRFS', () => {
  let sb: Sandbox;
  let full = '';
  let incr = '';

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 512 });
    await makeContainer(sb, 'c1');
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  it('makes a Full backup when there is no parent, and says so', async () => {
    const r = await sh('sbk-snap c1 | sbk-send | sbk-pack', sb);
    expect(r.stderr).toMatch(/no valid parent backup, making a Full backup/);
    expect(r.exitCode).toBe(0);
    full = r.stdout.trim();
    expect(full).toMatch(/\/backups\/c1_\d+_Full\.tar\.gz$/);
    const sets = await ls(path.join(sb.backupDir, 'c1'));
    expect(sets).toHaveLength(1);
    expect(sets[0]).toMatch(/^\d+_Full$/);
    const set = path.join(sb.backupDir, 'c1', sets[0]!);
    expect(await ls(set)).toEqual(['.sbk-confirmed', ...VOLUMES.slice().sort()]);
    // Snapshots are read-only.
    const show = await execa('btrfs', ['property', 'get', '-ts', path.join(set, 'rootfs'), 'ro']);
    expect(show.stdout.trim()).toBe('ro=true');
  });

  it('makes an incremental against the confirmed Full that holds only the changed blocks', async () => {
    const c = path.join(sb.lxcDir, 'c1');
    await writeFile(path.join(c, 'var/log/syslog'), 'changed\n', { flag: 'a' });
    await writeFile(path.join(c, 'home/ubuntu/new file'), 'new\n');
    await rm(path.join(c, 'rootfs/etc/file with spaces.conf'));
    const r = await sh('sbk-snap c1 > "$T/rec.ndjson" && sbk-send < "$T/rec.ndjson" | sbk-pack', sb, { env: { T: sb.dir } });
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    incr = r.stdout.trim();
    expect(path.basename(incr)).toMatch(/^c1_\d+\.tar\.gz$/);
    const rec = JSON.parse(await readFile(path.join(sb.dir, 'rec.ndjson'), 'utf8'));
    expect(rec.full).toBe(false);
    expect(rec.parent.name).toBe(path.basename(full, '.tar.gz'));
    expect(rec.volumes.map((v: { name: string }) => v.name)).toEqual(VOLUMES);
    expect(rec.volumes.find((v: { name: string }) => v.name === 'var').mount).toBe('/var');
    const [fs, is] = [(await stat(full)).size, (await stat(incr)).size];
    expect(fs).toBeGreaterThan(1024 * 1024); // 1 MiB of random data in opt
    expect(is).toBeLessThan(fs / 50);
    // The record names each snapshot and its parent by the UUIDs btrfs shows for them.
    const shown = async (p: string) => /^\s*UUID:\s*(\S+)/m.exec((await execa('btrfs', ['subvolume', 'show', p])).stdout)?.[1];
    for (const v of rec.volumes as { name: string; snapshot: string; uuid: string; parentUuid: string }[]) {
      expect(v.uuid, v.name).toBe(await shown(v.snapshot));
      expect(v.parentUuid, v.name).toBe(await shown(path.join(rec.parent.set, v.name)));
    }
  });

  it('subvolume facts of a set, looked up together, are those `btrfs subvolume show` gives each', async () => {
    const { subvolumeInfo, subvolumeInfos } = await import('../../src/system/btrfs.js');
    const sets = await ls(path.join(sb.backupDir, 'c1'));
    const set = path.join(sb.backupDir, 'c1', sets.at(-1)!);
    // Look-alikes the one list also holds: the same path under another directory, a writable one.
    const decoy = path.join(sb.lxcDir, 'decoy', path.relative(sb.lxcDir, set));
    await mkdir(decoy, { recursive: true });
    await execa('btrfs', ['subvolume', 'snapshot', '-r', path.join(set, 'rootfs'), path.join(decoy, 'rootfs')]);
    await execa('btrfs', ['subvolume', 'create', path.join(decoy, 'rw')]);
    try {
      const paths = [...VOLUMES.map((v) => path.join(set, v)), path.join(decoy, 'rw'), path.join(sb.lxcDir, 'c1', 'rootfs')];
      expect(await subvolumeInfos(paths)).toEqual(await Promise.all(paths.map((p) => subvolumeInfo(p))));
      expect((await subvolumeInfos([path.join(decoy, 'rw'), path.join(decoy, 'rootfs')]))[0]!.readonly).toBe(false);
    } finally {
      await execa('btrfs', ['subvolume', 'delete', path.join(decoy, 'rootfs'), path.join(decoy, 'rw')]);
      await rm(path.join(sb.lxcDir, 'decoy'), { recursive: true, force: true });
    }
  });

  it('archives restore by hand (tar, cat, btrfs receive) into trees identical to the snapshots', async () => {
    const sets = await ls(path.join(sb.backupDir, 'c1'));
    const out = path.join(sb.mnt, 'byhand');
    await receiveByHand(full, path.join(out, 'full'));
    await receiveByHand(incr, path.join(out, 'incr'));
    for (const [dir, set] of [['full', sets[0]!], ['incr', sets[1]!]] as const) {
      for (const v of VOLUMES) {
        expect(await treeDiff(path.join(sb.backupDir, 'c1', set, v), path.join(out, dir, v))).toEqual([]);
      }
    }
    // The special files came through: symlink, hardlink, fifo, xattr, sparse file.
    const r = path.join(out, 'incr/rootfs');
    expect((await execa('stat', ['-c', '%F %h', path.join(r, 'etc/a fifo'), path.join(r, 'usr/bin/tool')])).stdout).toBe(
      'fifo 1\nregular file 2',
    );
    expect((await execa('getfattr', ['--only-values', '-n', 'user.sbk', path.join(r, 'etc/hostname')])).stdout).toBe('hello');
    const du = await execa('du', ['-k', path.join(r, 'usr/sparse.img')]);
    expect(Number(du.stdout.split('\t')[0])).toBeLessThan(1024);
  });

  it('the tar stream of sbk-send is readable by tar, and each archive holds manifest, meta, deltas, trailer', async () => {
    const r = await execa('tar', ['tzf', incr]);
    const names = r.stdout.split('\n');
    expect(names[0]).toBe('manifest.json');
    expect(names).toContain('meta/config');
    expect(names).toContain('meta/fstab');
    expect(names.at(-1)).toBe('trailer.json');
    const manifest = JSON.parse((await execa('tar', ['xzOf', incr, 'manifest.json'])).stdout);
    expect(manifest).toMatchObject({ sbk: 'manifest', container: 'c1', full: false });
    expect(manifest.tool).toMatch(/^sbk \d/);
  });

  it('--incremental fails without a valid parent; --full forces a Full', async () => {
    await makeContainer(sb, 'c2', { content: false, lxc3: true });
    const r = await sh('sbk-snap --incremental c2', sb);
    expect(r.exitCode).toBe(5);
    expect(r.stderr).toMatch(/no valid parent/);
    expect(await ls(path.join(sb.backupDir, 'c2'))).toEqual([]);
    const f = await sh('sbk-snap --full c2 | sbk-send | sbk-pack', sb);
    expect(f.exitCode).toBe(0);
    expect(f.stdout).toMatch(/c2_\d+_Full\.tar\.gz/);
  });

  it('two backups in the same second do not collide', async () => {
    const r = await sh('sbk-snap c2 | sbk-send | sbk-pack && sbk-snap c2 | sbk-send | sbk-pack', sb);
    expect(r.exitCode).toBe(0);
    const times = r.stdout.trim().split('\n').map((l) => Number(/_(\d+)(_Full)?\.tar\.gz$/.exec(l)![1]));
    expect(times).toHaveLength(2);
    expect(times[1]).toBeGreaterThan(times[0]!);
  });

  it('--all backs up every container and never the backups dir', async () => {
    await mkdir(path.join(sb.lxcDir, 'not-a-container'));
    const r = await sh('sbk-snap --all > "$T/all.ndjson" && cut -c1-200 "$T/all.ndjson"', sb, { env: { T: sb.dir } });
    expect(r.exitCode).toBe(0);
    const recs = (await readFile(path.join(sb.dir, 'all.ndjson'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
    expect(recs.map((x) => x.container)).toEqual(['c1', 'c2']);
  });

  it('a backup whose pipe failed is never a parent, and nothing is stored under a final name', async () => {
    await makeContainer(sb, 'c3', { volumes: ['rootfs'], content: false });
    await writeFile(path.join(sb.lxcDir, 'c3/rootfs/data'), Buffer.alloc(200_000, 1));
    const first = await sh('sbk-snap c3 | sbk-send | sbk-pack', sb);
    expect(first.exitCode).toBe(0);
    const before = await ls(sb.backupDir);
    // The tar stream is cut: sbk-pack must store nothing and confirm nothing.
    const cut = await sh('sbk-snap c3 | sbk-send | head -c 3000 | sbk-pack', sb);
    expect(cut.exitCode).toBe(4);
    expect(cut.stderr).toMatch(/sbk-pack: .*(truncated|broken|incomplete)/);
    expect(await ls(sb.backupDir)).toEqual(before);
    // sbk-pack removed the snapshots of the backup it could not store.
    expect(cut.stderr).toMatch(/removed the snapshots of the failed backup c3_\d+/);
    expect((await ls(path.join(sb.backupDir, 'c3'))).filter((n) => !n.startsWith('.'))).toHaveLength(1);
    // The next incremental's parent is the first (confirmed) set, not the cut one.
    const next = await sh('sbk-snap c3', sb);
    expect(next.exitCode).toBe(0);
    const rec = JSON.parse(next.stdout);
    expect(rec.parent.name).toBe(path.basename(first.stdout.trim(), '.tar.gz'));
  });

  it('never overwrites an existing archive', async () => {
    const rec = path.join(sb.dir, 'c3.ndjson');
    const r = await sh(`sbk-snap c3 > ${rec} && sbk-send < ${rec} | sbk-pack && sbk-send < ${rec} | sbk-pack`, sb);
    expect(r.exitCode).toBe(6);
    expect(r.stderr).toMatch(/already exists/);
  });

  it('-o FILE writes one archive; -o - writes gzip to stdout', async () => {
    const rec = path.join(sb.dir, 'c3b.ndjson');
    const file = path.join(sb.dir, 'one.tar.gz');
    const r = await sh(`sbk-snap c3 > ${rec} && sbk-send < ${rec} | sbk-pack -o ${file} && sbk-send < ${rec} | sbk-pack -o - | gzip -t`, sb);
    expect(r.exitCode).toBe(0);
    expect((await execa('tar', ['tzf', file])).stdout.split('\n')[0]).toBe('manifest.json');
  });

  describe('bad input: one clear line, non-zero exit, nothing half-made', () => {
    it('unknown container', async () => {
      const r = await sh('sbk-snap nosuch', sb);
      expect(r.exitCode).toBe(5);
      expect(r.stderr).toMatch(/no container at .*nosuch/);
      expect(r.stderr.trim().split('\n')).toHaveLength(1);
    });

    it.each([
      ['a/b', /contains '\/'/],
      ['..', /contains '\.\.'/],
      ['a b', /white space/],
    ])('container name %j', async (name, msg) => {
      const r = await sh(`sbk-snap '${name}'`, sb);
      expect(r.exitCode).toBe(2);
      expect(r.stderr).toMatch(msg);
    });

    it('a volume that is not a subvolume', async () => {
      await makeContainer(sb, 'c4', { volumes: ['rootfs', 'home'], content: false });
      await execa('btrfs', ['subvolume', 'delete', path.join(sb.lxcDir, 'c4/home')]);
      await mkdir(path.join(sb.lxcDir, 'c4/home'));
      const r = await sh('sbk-snap c4', sb);
      expect(r.exitCode).toBe(3);
      expect(r.stderr).toMatch(/c4\/home is not a BTRFS subvolume/);
      // It says what to do about it, in the same line.
      expect(r.stderr).toMatch(/c4\/home is not a BTRFS subvolume: only subvolumes are backed up as volumes; .*btrfs subvolume create/);
      expect(await ls(path.join(sb.backupDir, 'c4'))).toEqual([]);
    });

    it('a container not on BTRFS', async () => {
      const lxc = await mkdtemp(path.join(os.tmpdir(), 'sbk-ext4-'));
      try {
        await mkdir(path.join(lxc, 'c1/rootfs'), { recursive: true });
        await writeFile(path.join(lxc, 'c1/config'), `lxc.rootfs = ${lxc}/c1/rootfs\n`);
        const r = await sh('sbk-snap c1', undefined, { env: { SBK_LXC_DIR: lxc } });
        expect(r.exitCode).toBe(3);
        expect(r.stderr).toMatch(/not on a BTRFS filesystem/);
      } finally {
        await rm(lxc, { recursive: true, force: true });
      }
    });

    it('malformed and truncated NDJSON names the line', async () => {
      const good = (await sh('sbk-snap c3', sb)).stdout;
      const bad = await sh('sbk-send > /dev/null', sb, { input: good + '\n{"sbk":"backup", "oops\n' });
      expect(bad.exitCode).toBe(3);
      expect(bad.stderr).toMatch(/line 2: malformed JSON/);
      const cut = await sh('sbk-send > /dev/null', sb, { input: good.slice(0, 100) });
      expect(cut.exitCode).toBe(3);
      expect(cut.stderr).toMatch(/line 1/);
      const missing = await sh('sbk-send > /dev/null', sb, { input: '{"sbk":"backup","format":1}\n' });
      expect(missing.exitCode).toBe(3);
      expect(missing.stderr).toMatch(/line 1: container name missing/);
    });

    it('the wrong kind of stream is refused by each stage', async () => {
      const tarIn = await sh('sbk-snap c3 | sbk-send | sbk-send > /dev/null', sb);
      expect(tarIn.exitCode).toBe(3);
      expect(tarIn.stderr).toMatch(/expected NDJSON backup records .* got a tar stream/);
      const recIn = await sh('sbk-snap c3 | sbk-pack', sb);
      expect(recIn.exitCode).toBe(3);
      expect(recIn.stderr).toMatch(/got NDJSON records .*pipe the records through sbk-send first/);
      const gzIn = await sh(`sbk-pack < ${full}`, sb);
      expect(gzIn.exitCode).toBe(3);
      expect(gzIn.stderr).toMatch(/already compressed/);
    });

    it('binary output is never written to a terminal', async () => {
      const rec = path.join(sb.dir, 'tty.ndjson');
      expect((await sh(`sbk-snap c3 > ${rec}`, sb)).exitCode).toBe(0);
      // script(1) gives the command a pseudo-terminal as stdout.
      for (const cmd of [`sbk-send < ${rec}`, `sbk-send < ${rec} | sbk-pack -o -`]) {
        const r = await sh(`script -qec '${cmd}' /dev/null`, sb);
        expect(r.exitCode).toBe(2);
        expect(r.stdout).toMatch(/refusing to write (a tar stream|gzip data) to a terminal/);
      }
    });

    it('a truncated tar stream stores nothing', async () => {
      const before = await ls(sb.backupDir);
      for (const n of [512, 1024, 5000]) {
        const r = await sh(`sbk-snap c3 | sbk-send | head -c ${n} | sbk-pack`, sb);
        expect(r.exitCode).toBe(4);
      }
      expect((await ls(sb.backupDir)).filter((n) => n.endsWith('.tar.gz') || n.startsWith('.'))).toEqual(
        before.filter((n) => n.endsWith('.tar.gz') || n.startsWith('.')),
      );
    });

    it('the backup dir on a full filesystem: clean error, no partial archive, nothing confirmed', async () => {
      const small = path.join(sb.dir, 'small');
      await mkdir(small);
      await execa('mount', ['-t', 'tmpfs', '-o', 'size=300k', 'tmpfs', small]);
      try {
        // c1's Full is about 1 MiB compressed: it cannot fit. The snapshots stay on BTRFS.
        const rec = path.join(sb.dir, 'full.ndjson');
        const r = await sh(`sbk-snap --full c1 > ${rec} && sbk-send < ${rec} | sbk-pack --backup-dir ${small}`, sb);
        expect(r.exitCode).toBe(1);
        expect(r.stderr).toMatch(/no space left on device/);
        expect(r.stderr).not.toMatch(/at .*\.js/); // no stack trace
        expect(await ls(small)).toEqual([]);
        const set = JSON.parse(await readFile(rec, 'utf8')).set;
        expect(await ls(set)).not.toContain('.sbk-confirmed');
      } finally {
        await unmount(small);
      }
    });
  });

  it('help and version work without root or input', async () => {
    for (const b of ['sbk-snap', 'sbk-send', 'sbk-pack', 'sbk-changelog', 'sbk-plan', 'sbk-unpack']) {
      const r = await sh(`${b} --help`, undefined);
      expect(r.exitCode).toBe(0);
      expect(r.stdout).toMatch(/--lxc-dir/);
      expect((await sh(`${b} --version`, undefined)).stdout).toMatch(/^\d+\.\d+\.\d+/);
    }
    void symlink;
    void appendFile;
    void rename;
  });
});

describe.skipIf(mode === 'skip')('--all and containers it cannot back up', () => {
  let sb: Sandbox;

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256 });
    await makeContainer(sb, 'a1', { volumes: ['rootfs', 'home'] });
    // b2: its home is a plain directory, not a subvolume.
    await makeContainer(sb, 'b2', { volumes: ['rootfs', 'home'], content: false });
    await execa('btrfs', ['subvolume', 'delete', path.join(sb.lxcDir, 'b2/home')]);
    await mkdir(path.join(sb.lxcDir, 'b2/home'));
    // d3: a dir-backed rootfs (a plain directory), as `lxc-create -B dir` makes it.
    const d3 = path.join(sb.lxcDir, 'd3');
    await mkdir(path.join(d3, 'rootfs/etc'), { recursive: true });
    await writeFile(path.join(d3, 'config'), `lxc.rootfs.path = dir:${d3}/rootfs\nlxc.uts.name = d3\n`);
    // Not containers: no config.
    await mkdir(path.join(sb.lxcDir, 'just-a-dir'));
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  it('says on stderr every container it skipped and why, exits 1, and the others are backed up by the whole pipe', async () => {
    const r = await sh('sbk-snap --all | sbk-changelog | sbk-send | sbk-pack', sb);
    expect(r.exitCode).toBe(1);
    const errs = r.stderr.split('\n').filter((l) => /not backed up/.test(l));
    expect(errs).toHaveLength(2);
    expect(errs[0]).toMatch(/^sbk-snap: .*b2: not backed up: .*b2\/home is not a BTRFS subvolume/);
    expect(errs[1]).toMatch(/^sbk-snap: .*d3: not backed up: .*d3\/rootfs is not a BTRFS subvolume/);
    expect(r.stderr).not.toMatch(/just-a-dir|backups/);
    // One good container: a pipe of several records is another test's subject.
    expect(path.basename(r.stdout.trim())).toMatch(/^a1_\d+_Full\.tar\.gz$/);
    expect((await ls(path.join(sb.backupDir, 'a1')))[0]).toMatch(/^\d+_Full$/);
    expect(await ls(path.join(sb.backupDir, 'b2'))).toEqual([]);
    expect(await ls(path.join(sb.backupDir, 'd3'))).toEqual([]);
  });

  it('-v names what is not a container; with only unusable containers --all exits 1 and makes nothing', async () => {
    const v = await sh('sbk-snap -v --all > /dev/null', sb);
    expect(v.stderr).toMatch(/skipping just-a-dir: no LXC config/);
    // a1 stops being a container: only the unusable ones are left.
    await rm(path.join(sb.lxcDir, 'a1', 'config'));
    const r = await sh('sbk-snap --all', sb);
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/b2: not backed up/);
    expect(r.stderr).toMatch(/d3: not backed up/);
  });
});

describe.skipIf(mode === 'skip')('a local chain whose archives were removed by hand', () => {
  let sb: Sandbox;
  const backup = (opts = '') => sh(`sbk-snap ${opts} c3 | sbk-send | sbk-pack`, sb);
  const stored = (r: { stdout: string }) => path.basename(r.stdout.trim());

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256 });
    await makeContainer(sb, 'c3', { content: false });
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  // A missing archive is named under both the names it may have (gzip, zstd).
  const missing = (gz: string) => `${gz} (or ${gz.replace(/\.tar\.gz$/, '.tar.zst')})`;

  it('the Full archive removed: the next backup is a Full and says why; --incremental fails', async () => {
    const f = await backup();
    expect(f.exitCode).toBe(0);
    const i = await backup();
    expect(i.exitCode).toBe(0);
    expect(stored(i)).toMatch(/^c3_\d+\.tar\.gz$/);
    await rm(path.join(sb.backupDir, stored(f)));

    const inc = await sh('sbk-snap --incremental c3', sb);
    expect(inc.exitCode).toBe(5);
    expect(inc.stderr).toContain(`${missing(stored(f))} is not in ${sb.backupDir}`);
    expect(inc.stderr.trim().split('\n')).toHaveLength(1);

    const next = await backup();
    expect(next.exitCode).toBe(0);
    expect(stored(next)).toMatch(/^c3_\d+_Full\.tar\.gz$/);
    expect(next.stderr).toContain(`the chain of ${stored(i).replace('.tar.gz', '')} is not whole: ${missing(stored(f))} is not in ${sb.backupDir}; making a Full backup`);
  });

  it('a middle incremental archive removed: the next backup is a Full and says why', async () => {
    const i1 = await backup();
    const i2 = await backup();
    expect([stored(i1), stored(i2)]).toEqual([expect.stringMatching(/^c3_\d+\.tar\.gz$/), expect.stringMatching(/^c3_\d+\.tar\.gz$/)]);
    await rm(path.join(sb.backupDir, stored(i1)));
    const next = await backup();
    expect(next.exitCode).toBe(0);
    expect(stored(next)).toMatch(/^c3_\d+_Full\.tar\.gz$/);
    expect(next.stderr).toContain(`${missing(stored(i1))} is not in ${sb.backupDir}; making a Full backup`);
    // The chain is whole again: the next backup is an incremental on that Full.
    const after = await backup();
    expect(after.stderr).toBe('');
    expect(stored(after)).toMatch(/^c3_\d+\.tar\.gz$/);
  });

  it('a chain confirmed by receipts is judged by them, not by this backup dir', async () => {
    const store = path.join(sb.dir, 'store');
    const remote = (opts = '') => sh(`sbk-snap ${opts} c3 | sbk-send | sbk-pack -o - | sbk-pack --store "$S" | sbk-snap --confirm`, sb, { env: { S: store } });
    const f = await remote('--full');
    expect(f.exitCode).toBe(0);
    const i = await remote();
    expect(i.exitCode).toBe(0);
    expect(i.stderr).toBe('');
    const names = await ls(store);
    expect(names.filter((n) => n.endsWith('.tar.gz'))).toEqual([expect.stringMatching(/^c3_\d+_Full\.tar\.gz$/), expect.stringMatching(/^c3_\d+\.tar\.gz$/)]);
  });
});
