// sbk-unpack's tar writer and listing (stages/unpack/from-tree.ts, tar-out.ts, list.ts): a
// container directory with every kind of file (hard links, symlinks, fifos, devices, sockets,
// xattrs, ACLs, file capabilities, sparse files, long and odd names, a volume mounted over a
// rootfs directory) written as a pax tar, extracted by GNU tar and by bsdtar, equals the tree
// the container sees (rsync -naHAXc, allocated blocks of sparse files, link counts); the
// replay's overlay overrides what the tree holds; --path selects exactly the asked subtrees.
import { describe, it, expect } from 'vitest';
import { link, mkdir, mkdtemp, readdir, rm, stat, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { execa } from 'execa';
import { tempDirEach } from '../helpers/tempdir.js';
import { treeDiff } from '../helpers/sandbox.js';
import { Log } from '../../src/core/log.js';
import { unpackFromTree } from '../../src/stages/unpack/from-tree.js';
import type { MetaOverlay, TreeProducer } from '../../src/stages/unpack/tree.js';
import type { ListedFile } from '../../src/stages/unpack/list.js';
import { SbkError } from '../../src/core/errors.js';

let tmp = '';
tempDirEach('sbk-tar-out-', (d) => (tmp = d));

const CONFIG = `lxc.rootfs.path = btrfs:/var/snap/subutai/common/lxc/c1/rootfs
lxc.mount.entry = /var/snap/subutai/common/lxc/c1/home home none bind,rw 0 0
lxc.mount.entry = /var/snap/subutai/common/lxc/c1/opt opt none bind,rw 0 0
lxc.mount.entry = proc proc proc nodev,noexec,nosuid 0 0
`;

// Every kind of file the tree of a container holds (as root: owners, devices, capabilities).
const FILL = String.raw`
set -e
cd "$1"
mkdir -p rootfs/etc/nginx rootfs/home/hidden rootfs/opt rootfs/usr/lib home/ubuntu opt/app
echo c1 > rootfs/etc/hostname
echo 'worker_processes 1;' > rootfs/etc/nginx/nginx.conf
echo other > rootfs/etc/nginx/mime.types
echo shadowed > rootfs/home/hidden/x
chown 1000:1000 rootfs/etc/nginx; chmod 750 rootfs/etc/nginx
echo data > rootfs/usr/lib/a; ln rootfs/usr/lib/a rootfs/usr/lib/b; ln rootfs/usr/lib/a rootfs/etc/a-third-name
ln -s ../usr/lib/a rootfs/etc/sym; ln -s /nowhere/at/all rootfs/etc/dangling
mkfifo rootfs/etc/fifo; mknod rootfs/etc/null c 1 3; mknod rootfs/etc/loop9 b 7 9
: > rootfs/etc/empty
dd if=/dev/urandom of=rootfs/usr/sparse bs=4k count=2 seek=300 status=none; truncate -s 4M rootfs/usr/sparse
truncate -s 200M rootfs/usr/all-hole
dd if=/dev/urandom of=rootfs/usr/hole-first bs=4k count=1 seek=100 status=none
printf 'x%.0s' $(seq 1 5000) > rootfs/usr/not-sparse
setfattr -n user.bin -v 0sAAEC/w== rootfs/etc/hostname
setfattr -n user.empty rootfs/etc/empty
setfacl -m u:1234:r,g:2345:rw rootfs/etc/nginx/nginx.conf
setfacl -d -m u:1234:rx rootfs/etc/nginx
setcap cap_net_raw+ep rootfs/usr/lib/a
chmod 4755 rootfs/usr/lib/a; chmod 1777 rootfs/usr; chmod 2750 rootfs/usr/lib
long=$(printf 'n%.0s' $(seq 1 255)); echo long > "rootfs/usr/$long"
deep=rootfs/usr; for i in $(seq 1 30); do deep="$deep/dir-number-$i"; done; mkdir -p "$deep"; echo deep > "$deep/f"
ln -s "$long" rootfs/usr/to-long
touch "rootfs/etc/$(printf 'new\nline')" 'rootfs/etc/back\slash' "rootfs/etc/$(printf 'latin\xe9')" "rootfs/etc/$(printf 'bad\xff\xfe')"
echo notes > home/ubuntu/notes.txt; chown -R 1000:1001 home/ubuntu; chmod 700 home/ubuntu
echo bin > opt/app/run; chmod 755 opt/app/run
touch -d 2001-02-03T04:05:06.123456789Z rootfs/etc/hostname
touch -h -d 2002-02-03T04:05:06Z rootfs/etc/sym
`;

/** A Unix socket file at `p` that outlives its server (Node unlinks the path it listened on). */
async function makeSocket(p: string): Promise<void> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(`${p}.tmp`, resolve));
  await link(`${p}.tmp`, p);
  await new Promise((resolve) => server.close(resolve));
  await rm(`${p}.tmp`, { force: true });
  await execa('touch', ['-h', '-d', '2003-01-01', path.dirname(p)]);
}

/** A producer that builds the sample container directory (as the replay would) in `dir`. */
function sample(overlay: MetaOverlay = new Map(), extra = ''): TreeProducer {
  return async (dir) => {
    await mkdir(dir);
    await execa('bash', ['-c', FILL + extra, 'fill', dir]);
    await makeSocket(path.join(dir, 'rootfs/etc/sock'));
    await execa('bash', ['-c', `printf '%s' "$2" > "$1/config"`, 'x', dir, CONFIG]);
    return { volumes: ['rootfs', 'home', 'opt'], overlay };
  };
}

/** What the container sees: rootfs with home and opt mounted over its directories; no sockets. */
async function expectedView(dir: string, into: string): Promise<void> {
  await execa('bash', [
    '-c',
    'set -e; cp -a --sparse=always "$1/rootfs" "$2"; rm -rf "$2/home" "$2/opt"; cp -a "$1/home" "$2/home"; cp -a "$1/opt" "$2/opt"; find "$2" -type s -exec sh -c \'t=$(stat -c %y "${1%/*}"); rm "$1"; touch -d "$t" "${1%/*}"\' x {} \\;',
    'x',
    dir,
    into,
  ]);
}

const log = new Log('sbk-unpack', 0);

/** Runs the tar writer (or listing) on the sample, keeping a copy of the tree it was made from. */
async function run(mode: 'tar' | 'list', opts: { paths?: string[]; json?: boolean; overlay?: MetaOverlay; extra?: string } = {}) {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  const kept = path.join(tmp, 'source');
  const produce = sample(opts.overlay, opts.extra);
  const keep: TreeProducer = async (dir) => {
    const r = await produce(dir);
    await expectedView(dir, kept);
    await execa('cp', ['-a', '--sparse=always', dir, path.join(tmp, 'container')]);
    return r;
  };
  await mkdir(path.join(tmp, 'scratch'), { recursive: true });
  await unpackFromTree(keep, { mode, json: opts.json, paths: opts.paths, tmp: path.join(tmp, 'scratch'), out, log, signal: new AbortController().signal });
  out.end();
  return { bytes: Buffer.concat(chunks), kept, container: path.join(tmp, 'container') };
}

async function extract(bytes: Buffer, into: string, tool: 'gnu' | 'bsd'): Promise<void> {
  await mkdir(into);
  const args =
    tool === 'gnu'
      ? ['tar', '-x', '--xattrs', "--xattrs-include=*", '--acls', '--numeric-owner', '-p', '-f', '-', '-C', into]
      : ['bsdtar', '-x', '--xattrs', '--acls', '--numeric-owner', '-p', '-f', '-', '-C', into];
  const r = await execa(args[0]!, args.slice(1), { input: bytes, reject: false });
  expect(r.exitCode, r.stderr).toBe(0);
  // GNU tar 1.34 knows no hdrcharset (names that are not UTF-8): it says so, and takes them as bytes.
  expect(r.stderr.split('\n').filter((l) => l !== '' && !/unknown extended header keyword 'hdrcharset'/.test(l))).toEqual([]);
}

const blocks = async (p: string) => (await stat(p)).blocks;

describe('sbk-unpack --tar', () => {
  for (const tool of ['gnu', 'bsd'] as const) {
    it(`extracts with ${tool === 'gnu' ? 'GNU tar' : 'bsdtar'} equal to the tree the container sees`, async () => {
      const { bytes, kept } = await run('tar');
      const got = path.join(tmp, 'got');
      await extract(bytes, got, tool);
      expect(await treeDiff(kept, got)).toEqual([]);
      for (const f of ['usr/sparse', 'usr/all-hole', 'usr/hole-first']) expect(await blocks(path.join(got, f)), f).toBe(await blocks(path.join(kept, f)));
      expect((await stat(path.join(got, 'usr/all-hole'))).size).toBe(200 * 1024 ** 2);
      expect((await stat(path.join(got, 'usr/lib/b'))).nlink).toBe(3);
      expect(await readFile(path.join(got, 'etc/hostname'), 'utf8')).toBe('c1\n');
      expect((await stat(path.join(got, 'etc/hostname'), { bigint: true })).mtimeNs).toBe(981173106123456789n);
      const caps = await execa('getcap', [path.join(got, 'usr/lib/a')]);
      expect(caps.stdout).toContain('cap_net_raw=ep');
      const acl = await execa('getfacl', ['-n', '-c', path.join(got, 'etc/nginx')]);
      expect(acl.stdout).toContain('default:user:1234:r-x');
    });
  }

  it('holds the members GNU tar lists, sparse files as GNU 1.0 sparse members, no socket', async () => {
    const { bytes } = await run('tar');
    const r = await execa('tar', ['-tv', '--numeric-owner', '-f', '-'], { input: bytes });
    expect(r.stdout).toMatch(/^crw-r--r-- 0\/0 +1,3 .* \.\/etc\/null$/m);
    expect(r.stdout).toMatch(/^brw-r--r-- 0\/0 +7,9 .* \.\/etc\/loop9$/m);
    expect(r.stdout).toMatch(/\.\/usr\/lib\/b link to \.\/etc\/a-third-name$/m);
    expect(r.stdout).not.toMatch(/sock/);
    expect(r.stdout).not.toMatch(/hidden/);
    expect(bytes.includes(Buffer.from('GNU.sparse.major=1'))).toBe(true);
    expect(bytes.includes(Buffer.from('hdrcharset=BINARY'))).toBe(true);
    // 1 GiB of hole takes no room in the tar.
    expect(bytes.length).toBeLessThan(1024 * 1024);
  });

  it("takes owners, modes, device nodes and xattrs from the replay's overlay over the tree's", async () => {
    const overlay: MetaOverlay = new Map([
      ['rootfs/etc/placeholder', { kind: 'chr', rdev: (4 << 8) | 64, uid: 0, gid: 5, mode: 0o620 }],
      ['rootfs/etc/hostname', { uid: 4321, gid: 8765, xattrs: { 'trusted.sbk': Buffer.from([0, 1, 2]), 'security.selinux': Buffer.from('x\0') } }],
      ['home', { mode: 0o711 }],
    ]);
    const { bytes, kept, container } = await run('tar', { overlay, extra: 'touch rootfs/etc/placeholder\n' });
    await execa('bash', [
      '-c',
      'set -e; cd "$1"; rm etc/placeholder; mknod etc/placeholder c 4 64; chown 0:5 etc/placeholder; chmod 620 etc/placeholder; chown 4321:8765 etc/hostname; setfattr -n trusted.sbk -v 0sAAEC etc/hostname; setfattr -n security.selinux -v 0seAA= etc/hostname; chmod 711 home; touch -h -r "$2/rootfs/etc/placeholder" etc/placeholder; touch -r "$2/rootfs/etc" etc',
      'x',
      kept,
      container,
    ]);
    await execa('touch', ['-d', '2001-02-03T04:05:06.123456789Z', path.join(kept, 'etc/hostname')]);
    const got = path.join(tmp, 'got');
    await extract(bytes, got, 'gnu');
    expect(await treeDiff(kept, got)).toEqual([]);
  });

  it('--path writes exactly the selected files and subtrees, across mount points', async () => {
    const { bytes } = await run('tar', { paths: ['/etc/nginx', '/home/ubuntu/notes.txt', '/etc/nginx/nginx.conf', '/opt'] });
    const r = await execa('tar', ['-t', '-f', '-'], { input: bytes });
    expect(r.stdout.split('\n').sort()).toEqual(['./etc/nginx/', './etc/nginx/mime.types', './etc/nginx/nginx.conf', './home/ubuntu/notes.txt', './opt/', './opt/app/', './opt/app/run'].sort());
  });

  it('--path of a file that is not there is an error naming it, exit 5, and writes nothing', async () => {
    const err = await run('tar', { paths: ['/etc/hostname', '/etc/nginx/missing.conf'] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SbkError);
    expect((err as SbkError).message).toContain('/etc/nginx/missing.conf');
    expect((err as SbkError).exitCode).toBe(5);
    const through = await run('tar', { paths: ['/etc/sym/x'] }).catch((e: unknown) => e);
    expect((through as SbkError).message).toMatch(/\/etc\/sym is a symbolic link/);
    // The scratch directory is gone on every way out.
    expect(await execa('ls', ['-A', path.join(tmp, 'scratch')]).then((r) => r.stdout)).toBe('');
  });
});

describe('sbk-unpack --list', () => {
  it('lists every file the tar holds (paths, types, modes, owners, sizes), as NDJSON with --json', async () => {
    const { bytes: listed } = await run('list', { json: true });
    const files = listed.toString('utf8').trim().split('\n').map((l) => JSON.parse(l) as ListedFile);
    const find = await execa('bash', ['-c', 'cd "$1" && find . -printf "%y %m %U %G %p\\n"', 'x', path.join(tmp, 'source')], { encoding: 'buffer' });
    const fromFind = Buffer.from(find.stdout)
      .toString('latin1')
      .split('\n')
      .filter(Boolean)
      .map((l) => l.replace(/ \.(\/|$)/, ' /'))
      .sort();
    const asFind = files
      .filter((f) => f.type !== 'sock')
      .map((f) => {
        const p = f.pathBase64 ? Buffer.from(f.pathBase64, 'base64').toString('latin1') : Buffer.from(f.path, 'utf8').toString('latin1');
        const y = { file: 'f', dir: 'd', symlink: 'l', chr: 'c', blk: 'b', fifo: 'p', sock: 's' }[f.type];
        return `${y} ${parseInt(f.mode, 8).toString(8)} ${f.uid} ${f.gid} ${p}`;
      })
      .sort();
    // The listing's newline name is one line of JSON; find's is cut in two: compare the others.
    const odd = (l: string) => l.includes('new') || l === 'line';
    expect(asFind.filter((l) => !odd(l))).toEqual(fromFind.filter((l) => !odd(l)));
    expect(files.find((f) => f.path === '/etc/sock')?.type).toBe('sock');
    expect(files.find((f) => f.path === '/usr/lib/b')?.linkTo).toBe('/etc/a-third-name');
    expect(files.find((f) => f.path === '/etc/null')).toMatchObject({ type: 'chr', major: 1, minor: 3 });
    expect(files.find((f) => f.path === '/etc/hostname')).toMatchObject({ size: 3, mtime: '981173106.123456789', uid: 0 });
  });

  it('lists like tar tv without --json, names escaped to one line', async () => {
    const { bytes } = await run('list', { paths: ['/etc/nginx', '/etc/sym'] });
    const lines = bytes.toString('utf8').trim().split('\n');
    expect(lines).toHaveLength(4);
    expect(lines[0]).toMatch(/^drwxr-x--- 1000\/1000 +\d+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \/etc\/nginx$/);
    expect(lines[3]).toMatch(/^lrwxrwxrwx 0\/0 +12 2002-02-03 04:05:06 \/etc\/sym -> \.\.\/usr\/lib\/a$/);
  });
});

describe('sbk-unpack --to DIR --path', () => {
  /** Every path under `dir`, relative, sorted. */
  const paths = async (dir: string) => (await execa('bash', ['-c', 'cd "$1" && find . | sort', 'x', dir])).stdout.split('\n');

  for (const where of ['the same filesystem', 'another filesystem'] as const) {
    it(`puts exactly the selection in DIR as a container directory, parents as in the tree (${where})`, async () => {
      const out = where === 'the same filesystem' ? tmp : await mkdtemp('/dev/shm/sbk-to-');
      const to = path.join(out, 'restored');
      try {
        const kept = path.join(tmp, 'container');
        const produce = sample(new Map([['rootfs/etc/nginx/nginx.conf', { uid: 77 }], ['rootfs/etc/hostname', { uid: 88 }]]));
        await mkdir(path.join(tmp, 'scratch'));
        const overlay = await unpackFromTree(
          async (dir) => {
            const r = await produce(dir);
            await execa('cp', ['-a', '--sparse=always', dir, kept]);
            return r;
          },
          { mode: 'to', to, paths: ['/etc/nginx', '/home/ubuntu/notes.txt', '/opt'], tmp: path.join(tmp, 'scratch'), log, signal: new AbortController().signal },
        );
        expect(await paths(to)).toEqual(
          ['.', './home', './home/ubuntu', './home/ubuntu/notes.txt', './opt', './opt/app', './opt/app/run', './rootfs', './rootfs/etc', './rootfs/etc/nginx', './rootfs/etc/nginx/mime.types', './rootfs/etc/nginx/nginx.conf'],
        );
        expect(await treeDiff(path.join(kept, 'rootfs/etc/nginx'), path.join(to, 'rootfs/etc/nginx'))).toEqual([]);
        expect(await treeDiff(path.join(kept, 'opt'), path.join(to, 'opt'))).toEqual([]);
        for (const d of ['rootfs', 'rootfs/etc', 'home/ubuntu', 'home']) {
          const [a, b] = [await stat(path.join(kept, d), { bigint: true }), await stat(path.join(to, d), { bigint: true })];
          expect([b.mode, b.uid, b.gid, b.mtimeNs], d).toEqual([a.mode, a.uid, a.gid, a.mtimeNs]);
        }
        expect([...overlay.keys()]).toEqual(['rootfs/etc/nginx/nginx.conf']);
        expect(await readdir(path.join(tmp, 'scratch'))).toEqual([]);
      } finally {
        if (out !== tmp) await rm(out, { recursive: true, force: true });
      }
    });
  }

  it('refuses a DIR that holds files, and writes nothing there', async () => {
    const to = path.join(tmp, 'full');
    await mkdir(to);
    await writeFile(path.join(to, 'x'), 'x');
    await mkdir(path.join(tmp, 'scratch'));
    const err = await unpackFromTree(sample(), { mode: 'to', to, paths: ['/etc'], tmp: path.join(tmp, 'scratch'), log, signal: new AbortController().signal }).catch((e: unknown) => e);
    expect((err as SbkError).exitCode).toBe(6);
    expect(await readdir(to)).toEqual(['x']);
    expect((await readdir(tmp)).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });
});
