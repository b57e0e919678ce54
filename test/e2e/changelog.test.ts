// sbk-changelog on real BTRFS: a battery of changes, each between two read-only snapshots,
// must give the expected lines by both methods (stream and rsync); then the filter mode on
// backup records, --from-stream, and the errors.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFile, readdir, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, sh, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();

/** Base content of every case's volume. */
const BASE = `
mkdir -p etc usr/bin var/cache/apt
echo host > etc/hostname
echo k > 'etc/file with spaces.conf'
head -c 300000 /dev/urandom > usr/bin/tool
ln -s ../usr/bin/tool etc/tool-link
ln usr/bin/tool usr/bin/tool-hardlink
truncate -s 64M usr/sparse.img
printf header | dd of=usr/sparse.img conv=notrunc status=none
mkfifo 'etc/a fifo'
echo deb > var/cache/apt/list
`;

interface Case {
  name: string;
  change: string;
  expect: string[];
  /** With --all-changes (default: the same as expect). */
  all?: string[];
}

const CASES: Case[] = [
  { name: 'add a file', change: 'echo new > etc/new', expect: ['modified /etc/', 'added /etc/new'] },
  { name: 'modify a file', change: 'echo more >> etc/hostname', expect: ['modified /etc/hostname'] },
  { name: 'delete a file', change: 'rm etc/hostname', expect: ['modified /etc/', 'deleted /etc/hostname'] },
  {
    name: 'add a directory tree',
    change: 'mkdir -p opt/a/b && echo 1 > opt/a/b/c && echo 2 > opt/a/d',
    expect: ['modified /', 'added /opt/', 'added /opt/a/', 'added /opt/a/b/', 'added /opt/a/b/c', 'added /opt/a/d'],
  },
  {
    name: 'remove a directory tree',
    change: 'rm -r var/cache',
    expect: ['modified /var/', 'deleted /var/cache/', 'deleted /var/cache/apt/', 'deleted /var/cache/apt/list'],
  },
  {
    name: 'rename a file',
    change: 'mv etc/hostname etc/hostname.old',
    expect: ['modified /etc/', 'deleted /etc/hostname', 'added /etc/hostname.old'],
  },
  {
    name: 'rename a directory (its contents are listed too)',
    change: 'mv var/cache var/cache2',
    expect: [
      'modified /var/',
      'deleted /var/cache/',
      'deleted /var/cache/apt/',
      'deleted /var/cache/apt/list',
      'added /var/cache2/',
      'added /var/cache2/apt/',
      'added /var/cache2/apt/list',
    ],
  },
  {
    name: 'move a directory elsewhere and change inside it',
    change: 'mv var/cache etc/c && echo x >> etc/c/apt/list && echo n > etc/c/apt/new',
    expect: [
      'modified /etc/',
      'added /etc/c/',
      'added /etc/c/apt/',
      'added /etc/c/apt/list',
      'added /etc/c/apt/new',
      'modified /var/',
      'deleted /var/cache/',
      'deleted /var/cache/apt/',
      'deleted /var/cache/apt/list',
    ],
  },
  {
    name: 'rename a directory inside a renamed directory',
    change: 'mv var/cache/apt var/apt2 && mv var var2',
    expect: [
      'modified /',
      'deleted /var/',
      'deleted /var/cache/',
      'deleted /var/cache/apt/',
      'deleted /var/cache/apt/list',
      'added /var2/',
      'added /var2/apt2/',
      'added /var2/apt2/list',
      'added /var2/cache/',
    ],
  },
  { name: 'add a hardlink', change: 'ln etc/hostname etc/hostname.link', expect: ['modified /etc/', 'added /etc/hostname.link'] },
  {
    name: 'remove a hardlink',
    change: 'rm usr/bin/tool-hardlink',
    expect: ['modified /usr/bin/', 'deleted /usr/bin/tool-hardlink'],
  },
  {
    name: 'modify a file with two hard links (both names are listed)',
    change: 'echo more >> usr/bin/tool',
    expect: ['modified /usr/bin/tool', 'modified /usr/bin/tool-hardlink'],
  },
  { name: 'retarget a symlink', change: 'ln -sfn ../etc/hostname etc/tool-link', expect: ['modified /etc/tool-link'] },
  { name: 'touch only', change: 'touch etc/hostname', expect: ['modified /etc/hostname'] },
  {
    name: 'touch to a past time',
    change: "touch -d '2001-02-03 04:05:06' 'etc/file with spaces.conf'",
    expect: ['modified /etc/file with spaces.conf'],
  },
  { name: 'chmod only', change: 'chmod 600 etc/hostname', expect: [], all: ['modified /etc/hostname'] },
  { name: 'chown only', change: 'chown 1000:1000 etc/hostname', expect: [], all: ['modified /etc/hostname'] },
  { name: 'xattr only', change: 'setfattr -n user.sbk -v 1 etc/hostname', expect: [], all: ['modified /etc/hostname'] },
  { name: 'chmod a directory', change: 'chmod 700 var/cache', expect: [], all: ['modified /var/cache/'] },
  { name: 'truncate', change: 'truncate -s 10 etc/hostname', expect: ['modified /etc/hostname'] },
  {
    name: 'write into a sparse file',
    change: 'printf data | dd of=usr/sparse.img bs=1 seek=1000000 conv=notrunc status=none',
    expect: ['modified /usr/sparse.img'],
  },
  {
    name: 'reflink copy',
    change: 'cp --reflink=always usr/bin/tool usr/bin/tool-copy',
    expect: ['modified /usr/bin/', 'added /usr/bin/tool-copy'],
  },
  {
    name: 'names with spaces, arrows, unicode, a newline, a backslash, invalid UTF-8',
    change: `echo > 'etc/new file with spaces' && echo > 'etc/a -> b' && echo > 'etc/ünïcødé ✓' &&
      echo > "etc/$(printf 'new\\nline')" && echo > 'etc/back\\slash' && echo > "etc/$(printf 'bad\\377')" &&
      echo > "etc/$(printf 'tab\\tand\\033esc')"`,
    expect: [
      'modified /etc/',
      'added /etc/a -> b',
      'added /etc/back\\\\slash',
      'added /etc/bad\\377',
      'added /etc/new\\nline', // byte order: \n (0x0a) sorts before a space
      'added /etc/new file with spaces',
      'added /etc/tab\\tand\\eesc',
      'added /etc/ünïcødé ✓',
    ],
  },
  {
    name: 'a file becomes a directory',
    change: 'rm etc/hostname && mkdir etc/hostname && echo > etc/hostname/x',
    expect: ['modified /etc/', 'deleted /etc/hostname', 'added /etc/hostname/', 'added /etc/hostname/x'],
  },
  {
    name: 'a directory becomes a file',
    change: 'rm -r var/cache && echo > var/cache',
    // One path: deleted before added, then what lies below it.
    expect: ['modified /var/', 'deleted /var/cache/', 'added /var/cache', 'deleted /var/cache/apt/', 'deleted /var/cache/apt/list'],
  },
  { name: 'a file becomes a symlink', change: 'rm etc/hostname && ln -s x etc/hostname', expect: ['modified /etc/hostname'] },
  { name: 'replaced by a rename over it', change: 'echo new > etc/tmp && mv etc/tmp etc/hostname', expect: ['modified /etc/hostname'] },
  {
    name: 'two files swap names',
    change: "mv etc/hostname t && mv 'etc/file with spaces.conf' etc/hostname && mv t 'etc/file with spaces.conf'",
    expect: ['modified /etc/file with spaces.conf', 'modified /etc/hostname'],
  },
  { name: 'created and removed in between: not listed', change: 'echo t > etc/tmpfile && rm etc/tmpfile', expect: [] },
  {
    name: 'fifo removed, device added',
    change: "rm 'etc/a fifo' && mknod etc/null c 1 3",
    expect: ['modified /etc/', 'deleted /etc/a fifo', 'added /etc/null'],
  },
  { name: 'nothing changed', change: 'true', expect: [] },
];

async function run(script: string, cwd: string) {
  await execa('bash', ['-e', '-c', script], { cwd, stdin: 'ignore' });
}

describe.skipIf(mode === 'skip')('sbk-changelog on loopback BTRFS', () => {
  let sb: Sandbox;
  let n = 0;

  /** A fresh volume with BASE, snapshotted before and after `change`. */
  async function pair(change: string): Promise<{ old: string; new: string; dir: string }> {
    const dir = path.join(sb.mnt, `case${n++}`);
    await mkdir(dir);
    const vol = path.join(dir, 'vol');
    await execa('btrfs', ['-q', 'subvolume', 'create', vol]);
    await run(BASE, vol);
    await execa('btrfs', ['-q', 'subvolume', 'snapshot', '-r', vol, path.join(dir, 'old')]);
    await run(change, vol);
    await execa('btrfs', ['-q', 'subvolume', 'snapshot', '-r', vol, path.join(dir, 'new')]);
    return { old: path.join(dir, 'old'), new: path.join(dir, 'new'), dir };
  }

  async function changelog(args: string, input?: Buffer) {
    const r = await sh(`sbk-changelog ${args}`, sb, input ? { input } : {});
    const stdout = String(r.stdout);
    return { exitCode: r.exitCode, stdout, stderr: String(r.stderr), lines: stdout.split('\n').filter(Boolean) };
  }

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 768 });
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  for (const c of CASES) {
    it(`${c.name}: both methods agree`, async () => {
      const p = await pair(c.change);
      for (const method of ['stream', 'rsync']) {
        const r = await changelog(`--method ${method} --between '${p.old}' '${p.new}'`);
        expect(r.stderr, method).toBe('');
        expect(r.exitCode, method).toBe(0);
        expect(r.lines, method).toEqual(c.expect);
        const all = await changelog(`--method ${method} --all-changes --between '${p.old}' '${p.new}'`);
        expect(all.lines, `${method} --all-changes`).toEqual(c.all ?? c.expect);
      }
    });
  }

  it('--mount prefixes the volume mount point', async () => {
    const p = await pair('echo x > cache/new || (mkdir -p cache && echo x > cache/new)');
    const r = await changelog(`--mount /var --between '${p.old}' '${p.new}'`);
    expect(r.lines).toEqual(['modified /var/', 'added /var/cache/', 'added /var/cache/new']);
    const rs = await changelog(`--method rsync --mount /var/ --between '${p.old}' '${p.new}'`);
    expect(rs.lines).toEqual(r.lines);
  });

  it('--from-stream reads incremental and full streams, with or without data', async () => {
    const p = await pair('echo more >> etc/hostname && echo n > etc/new && rm usr/bin/tool-hardlink');
    const expected = ['modified /etc/', 'modified /etc/hostname', 'added /etc/new', 'modified /usr/bin/', 'deleted /usr/bin/tool-hardlink'];
    for (const flags of ['--no-data', '']) {
      const stream = (await execa('btrfs', ['send', '-q', ...(flags ? [flags] : []), '-p', p.old, p.new], { encoding: 'buffer', stdin: 'ignore' })).stdout;
      const r = await changelog('--from-stream', Buffer.from(stream));
      expect(r.exitCode).toBe(0);
      expect(r.lines).toEqual(expected);
    }
    const full = (await execa('btrfs', ['send', '-q', '--no-data', p.old], { encoding: 'buffer', stdin: 'ignore' })).stdout;
    const r = await changelog('--from-stream --mount /srv', Buffer.from(full));
    expect(r.exitCode).toBe(0);
    expect(r.lines).toContain('added /srv/');
    expect(r.lines).toContain('added /srv/etc/a fifo');
    expect(r.lines).toContain('added /srv/usr/bin/tool-hardlink');
    expect(r.lines.every((l) => l.startsWith('added /srv/'))).toBe(true);
  });

  it('a corrupt or truncated stream: exit 4 and the byte offset', async () => {
    const p = await pair('echo more >> etc/hostname');
    const good = Buffer.from((await execa('btrfs', ['send', '-q', '--no-data', '-p', p.old, p.new], { encoding: 'buffer', stdin: 'ignore' })).stdout);
    const bad = Buffer.from(good);
    bad[40] ^= 0xff;
    let r = await changelog('--from-stream', bad);
    expect(r.exitCode).toBe(4);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/^sbk-changelog: corrupt send stream at byte offset 17: CRC32C mismatch in the snapshot command/);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    r = await changelog('--from-stream', good.subarray(0, good.length - 5));
    expect(r.exitCode).toBe(4);
    expect(r.stderr).toMatch(/byte offset \d+: truncated/);
    r = await changelog('--from-stream', Buffer.from('{"sbk":"backup"}\n'));
    expect(r.exitCode).toBe(3);
    expect(r.stderr).toMatch(/expected a btrfs send stream.*NDJSON/);
  });

  it('usage errors and missing snapshots', async () => {
    let r = await changelog('--between /nonexistent/a /nonexistent/b');
    expect(r.exitCode).toBe(5);
    expect(r.stderr).toMatch(/old snapshot \/nonexistent\/a does not exist/);
    r = await changelog('--between /tmp');
    expect(r.exitCode).toBe(2);
    r = await changelog('--method rsync --from-stream');
    expect(r.exitCode).toBe(2);
    r = await changelog(`--between '${sb.mnt}' /tmp`);
    expect(r.exitCode).toBe(3);
    expect(r.stderr).toMatch(/not a BTRFS subvolume|not on a BTRFS/);
  });

  describe('as a filter on backup records', () => {
    /** A previous set with rootfs and var, and a new set with rootfs, var and a new volume opt. */
    async function sets() {
      const base = path.join(sb.mnt, `sets${n++}`);
      const live = path.join(base, 'live');
      await mkdir(live, { recursive: true });
      for (const v of ['rootfs', 'var', 'opt']) await execa('btrfs', ['-q', 'subvolume', 'create', path.join(live, v)]);
      await run('mkdir etc && echo a > etc/hostname', path.join(live, 'rootfs'));
      await run('mkdir -p cache/apt && echo a > cache/apt/list', path.join(live, 'var'));
      await run('echo o > app.bin', path.join(live, 'opt'));
      const prev = path.join(base, '100_Full');
      const cur = path.join(base, '200');
      await mkdir(prev);
      await mkdir(cur);
      for (const v of ['rootfs', 'var']) await execa('btrfs', ['-q', 'subvolume', 'snapshot', '-r', path.join(live, v), path.join(prev, v)]);
      await run('echo b >> etc/hostname', path.join(live, 'rootfs'));
      await run('mv cache/apt cache/apt2', path.join(live, 'var'));
      for (const v of ['rootfs', 'var', 'opt']) await execa('btrfs', ['-q', 'subvolume', 'snapshot', '-r', path.join(live, v), path.join(cur, v)]);
      const ref = { time: 100, full: true, name: 'c1_100_Full', set: prev };
      const vol = (name: string, mount: string, set: string) => ({
        name,
        mount,
        source: path.join(live, name),
        snapshot: path.join(set, name),
        uuid: 'u',
        parentUuid: null,
      });
      const record = {
        sbk: 'backup',
        format: 1,
        container: 'c1',
        time: 200,
        full: false,
        name: 'c1_200',
        set: cur,
        containerDir: live,
        parent: ref,
        previous: ref,
        volumes: [vol('rootfs', '/', cur), vol('var', '/var', cur), vol('opt', '/opt', cur)],
      };
      const first = { ...record, time: 100, full: true, name: 'c1_100_Full', set: prev, parent: null, previous: null, volumes: [vol('rootfs', '/', prev), vol('var', '/var', prev)] };
      return { prev, cur, record, first };
    }

    const EXPECTED = [
      'modified /etc/hostname',
      'added /opt/',
      'added /opt/app.bin',
      'modified /var/cache/',
      'deleted /var/cache/apt/',
      'deleted /var/cache/apt/list',
      'added /var/cache/apt2/',
      'added /var/cache/apt2/list',
    ];

    const EXPECTED_FIRST = [
      'added /',
      'added /etc/',
      'added /etc/hostname',
      'added /var/',
      'added /var/cache/',
      'added /var/cache/apt/',
      'added /var/cache/apt/list',
    ];

    it("a first Full's changelog lists what a full send stream of each volume adds, odd names and all", async () => {
      const p = await pair('true');
      const set = path.join(p.dir, 'set');
      await mkdir(set);
      const vol = { name: 'new', mount: '/srv', source: p.new, snapshot: p.new, uuid: 'u', parentUuid: null };
      const rec = { sbk: 'backup', format: 1, container: 'c1', time: 1, full: true, name: 'c1_1_Full', set, containerDir: p.dir, parent: null, previous: null, volumes: [vol] };
      const r = await sh('sbk-changelog', sb, { input: JSON.stringify(rec) + '\n' });
      expect(r.stderr).not.toMatch(/error/i);
      expect(r.exitCode).toBe(0);
      expect(JSON.parse(String(r.stdout))).toEqual({ ...rec, changelog: path.join(set, '.sbk-changelog.txt') });
      const got = (await readFile(path.join(set, '.sbk-changelog.txt'), 'utf8')).split('\n').filter(Boolean);
      const full = (await execa('btrfs', ['send', '-q', '--no-data', p.new], { encoding: 'buffer', stdin: 'ignore' })).stdout;
      const oracle = await changelog('--from-stream --mount /srv', Buffer.from(full));
      expect(oracle.exitCode).toBe(0);
      expect(got).toEqual(oracle.lines);
      expect(got.length).toBeGreaterThan(5);
    });

    for (const method of ['stream', 'rsync']) {
      it(`writes each record's changelog and passes every record on (${method})`, async () => {
        const s = await sets();
        const input = JSON.stringify(s.first) + '\n' + JSON.stringify(s.record) + '\n';
        const r = await sh(`sbk-changelog --method ${method}`, sb, { input });
        expect(r.stderr).toMatch(/c1_200: 8 change\(s\) since c1_100_Full/);
        expect(r.exitCode).toBe(0);
        const out = String(r.stdout).split('\n').filter(Boolean).map((l) => JSON.parse(l));
        expect(out).toHaveLength(2);
        // No previous backup (a first Full): every path of every volume, added.
        const firstFile = path.join(s.prev, '.sbk-changelog.txt');
        expect(out[0]).toEqual({ ...s.first, changelog: firstFile });
        expect(r.stderr).toMatch(/c1_100_Full: 7 change\(s\) since nothing \(first backup/);
        expect((await readFile(firstFile, 'utf8')).split('\n').filter(Boolean)).toEqual(EXPECTED_FIRST);
        const file = path.join(s.cur, '.sbk-changelog.txt');
        expect(out[1]).toEqual({ ...s.record, changelog: file });
        expect((await readFile(file, 'utf8')).split('\n').filter(Boolean)).toEqual(EXPECTED);
        expect((await readdir(s.cur)).filter((f) => f.includes('.tmp-'))).toEqual([]);
      });
    }

    it('fails cleanly: no changelog file, no temporary file, a clear error', async () => {
      const s = await sets();
      const broken = { ...s.record, volumes: [...s.record.volumes, { ...s.record.volumes[0]!, name: 'home', mount: '/home', snapshot: path.join(s.cur, 'home') }] };
      const r = await sh('sbk-changelog', sb, { input: JSON.stringify(broken) + '\n' });
      expect(r.exitCode).toBe(5);
      expect(r.stderr).toMatch(/snapshot .*\/200\/home does not exist/);
      expect(r.stdout).toBe('');
      expect((await readdir(s.cur)).sort()).toEqual(['opt', 'rootfs', 'var']);
    });

    it('refuses other input kinds', async () => {
      const r = await sh('printf "btrfs-stream\\0\\1\\0\\0\\0" | sbk-changelog', sb);
      expect(r.exitCode).toBe(3);
      expect(r.stderr).toMatch(/expected NDJSON backup records/);
    });
  });

  it('writes the changelog atomically: a temporary name, then rename', async () => {
    // The file appears whole or not at all; covered above by the failure case. Here: an
    // existing changelog from an earlier run is replaced, not appended to.
    const p = await pair('echo more >> etc/hostname');
    const set = path.join(p.dir, 'set');
    await mkdir(set);
    await writeFile(path.join(set, '.sbk-changelog.txt'), 'stale\n');
    const ref = { time: 1, full: true, name: 'c1_1_Full', set: p.dir };
    const vol = { name: 'new', mount: '/', source: p.new, snapshot: p.new, uuid: 'u', parentUuid: null };
    const rec = { sbk: 'backup', format: 1, container: 'c1', time: 2, full: false, name: 'c1_2', set, containerDir: p.dir, parent: ref, previous: { ...ref, set: p.dir }, volumes: [vol] };
    // previous.set/<vol.name> = p.dir/new: the same snapshot, so no changes.
    const r = await sh('sbk-changelog', sb, { input: JSON.stringify(rec) + '\n' });
    expect(r.exitCode).toBe(0);
    expect(await readFile(path.join(set, '.sbk-changelog.txt'), 'utf8')).toBe('');
  });
});
