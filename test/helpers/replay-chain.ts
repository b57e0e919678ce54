// What the replay tests share: a chain of six backups of a container with every kind of change
// a send stream carries, scratch filesystems that are not BTRFS (an ext4 loop image, a tmpfs),
// and the comparison of a replayed tree with the snapshot it must equal: `rsync -naHAXc
// --numeric-ids` finds nothing, link counts agree, and sparse files stay sparse.
import { expect } from 'vitest';
import { execa } from 'execa';
import path from 'node:path';
import { makeContainer, scratchMount, sh, type Sandbox } from './sandbox.js';

export interface ChainPoint {
  archive: string;
  /** c1_<time>[_Full] */
  name: string;
  /** The snapshot set: what a replay of this point must equal. */
  set: string;
}

export const RICH_VOLUMES = ['rootfs', 'home'];

/** Bash run in the container's directory before each backup: the first makes the Full's content. */
export const RICH_CHANGES: string[] = [
  String.raw`
    cd rootfs
    mkdir -p odd tree/a/b tree/c
    printf nl > "odd/$(printf 'new\nline')"
    printf bs > 'odd/back\slash'
    printf bytes > "odd/$(printf 'caf\xe9\xff')"
    echo long > "odd/$(printf 'n%.0s' $(seq 255))"
    d=deep; for i in $(seq 30); do d="$d/$(printf 'd%.0s' $(seq 60))$i"; done; mkdir -p "$d"; echo deep > "$d/leaf"
    : > empty
    mknod dev-null c 1 3; mknod dev-loop b 7 200; chmod 640 dev-loop
    mkfifo fifo2
    perl -MSocket -e 'socket(S, AF_UNIX, SOCK_STREAM, 0) or die; bind(S, pack_sockaddr_un("sock")) or die'
    printf 'cap' > capfile; setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 capfile
    setfacl -m u:1234:rw,g:99:r etc/hostname; setfacl -d -m u:1234:rwx odd
    setfattr -n trusted.t -v 1 etc/hostname
    head -c 1048576 /dev/urandom > data.bin; head -c 524288 /dev/urandom > orig.bin
    head -c 10000 /dev/urandom > trunc.txt; echo ext > ext.txt
    truncate -s 32M sparse2; printf mid | dd of=sparse2 bs=1 seek=16000000 conv=notrunc status=none
    echo t > tree/a/b/f; ln data.bin data.link; ln -s "odd/$(printf 'new\nline')" nl-link
    chown 123:456 'odd/back\slash'; chown -h 7:8 nl-link
    chown -R 1000:1000 ../home/ubuntu
  `,
  String.raw`
    cd rootfs
    printf MIDDLE | dd of=data.bin bs=1 seek=300000 conv=notrunc status=none
    cp --reflink=always orig.bin reflink-unchanged
    truncate -s 100 trunc.txt
    truncate -s 200000 ext.txt; echo tail >> ext.txt
    ln data.bin data.link2
    printf four | dd of=sparse2 bs=1 seek=4000000 conv=notrunc status=none
    setfattr -n user.new -v v tree/a/b/f
    echo more >> ../home/ubuntu/.bashrc
  `,
  String.raw`
    cd rootfs
    cp --reflink=always data.bin reflink-changed; printf CHANGED | dd of=data.bin bs=1 seek=100 conv=notrunc status=none
    printf CHANGED | dd of=data.bin bs=1 seek=700000 conv=notrunc status=none
    rm empty; echo recreated > empty
    mv tree/a tree/c/a
    setfacl -m u:1234:r etc/hostname
    mkdir ../home/ubuntu/new-dir; echo n > ../home/ubuntu/new-dir/n
  `,
  String.raw`
    cd rootfs
    mv tree/c/a tree/a
    chmod 4755 capfile; chown 5:5 data.bin
    setfattr -x user.new tree/a/b/f
    rm dev-null; mknod dev-null c 1 5
    mv 'odd/back\slash' 'odd/renamed\x'
    rm fifo2; mkdir fifo2
  `,
  String.raw`
    cd rootfs
    ln -sfn tree nl-link
    rm -rf deep/*/*/*/*/*/*/*/*/*/*
    cp --reflink=always reflink-unchanged reflink2; printf Z >> reflink-unchanged
    echo changed > "odd/$(printf 'caf\xe9\xff')"
    mv orig.bin trunc.txt
    rm ../home/ubuntu/new-dir/n
  `,
  String.raw`
    cd rootfs
    rm -rf tree; mkdir -p tree/new; for i in $(seq 50); do echo $i > tree/new/f$i; done
    rm data.link; truncate -s 0 ext.txt
    mv ../home/ubuntu ../home/user
  `,
];

/** Makes container c1 (rootfs, home) in `sb` and backs it up once per change: a Full and five incrementals. */
export async function makeRichChain(sb: Sandbox): Promise<ChainPoint[]> {
  const c = await makeContainer(sb, 'c1', { volumes: RICH_VOLUMES });
  const points: ChainPoint[] = [];
  for (const change of RICH_CHANGES) {
    const ch = await execa('bash', ['-euo', 'pipefail', '-c', change], { cwd: c, reject: false, stdin: 'ignore' });
    expect(ch.exitCode, ch.stderr).toBe(0);
    // Every point is compared with its snapshot set: keep them all (the default keeps 2).
    const r = await sh('sbk-snap --keep-snapshots 100 c1 | sbk-changelog | sbk-send | sbk-pack', sb);
    expect(r.exitCode, r.stderr).toBe(0);
    const archive = r.stdout.trim();
    const name = path.basename(archive, '.tar.gz');
    const m = /^c1_(\d+(?:_Full)?)$/.exec(name)!;
    points.push({ archive, name, set: path.join(sb.backupDir, 'c1', m[1]!) });
  }
  return points;
}

export interface ScratchFs {
  mnt: string;
  cleanup(): Promise<void>;
}

/** An ext4 loop image or a tmpfs, mounted where the sandbox sweep finds it; unmounted and removed by cleanup. */
export async function makeScratchFs(kind: 'ext4' | 'tmpfs', sizeMiB = 512): Promise<ScratchFs> {
  const { mnt, cleanup } = await scratchMount(async (dir, m) => {
    if (kind === 'ext4') {
      const image = path.join(dir, 'ext4.img');
      await execa('truncate', ['-s', `${sizeMiB}M`, image]);
      await execa('mkfs.ext4', ['-q', '-F', image]);
      await execa('mount', ['-o', 'loop', image, m]);
    } else await execa('mount', ['-t', 'tmpfs', '-o', `size=${sizeMiB}M`, 'tmpfs', m]);
  });
  return { mnt, cleanup };
}

/** `find -printf` of a tree, NUL-separated, as path → fields. */
async function findEntries(dir: string, format: string, type: string): Promise<Map<string, string>> {
  const r = await execa('find', ['.', ...type.split(' '), '-printf', `%P\\t${format}\\0`], { cwd: dir, encoding: 'buffer', stdin: 'ignore' });
  const out = new Map<string, string>();
  for (const rec of Buffer.from(r.stdout).toString('latin1').split('\0')) {
    if (!rec) continue;
    const i = rec.lastIndexOf('\t');
    out.set(rec.slice(0, i), rec.slice(i + 1));
  }
  return out;
}

/**
 * How a replayed volume differs from its snapshot: rsync's itemized differences, link counts of
 * everything but directories (their counts are each filesystem's own), and sparse files (holes
 * in the snapshot, or in `blocksOf`) that got more than 64 KiB more blocks. Empty when they agree.
 */
export async function replayDiffs(snapshot: string, replayed: string, opts: { blocksOf?: string } = {}): Promise<string[]> {
  const r = await execa('rsync', ['-naHAXc', '--numeric-ids', '--delete', '--out-format=%i %n', `${snapshot}/`, `${replayed}/`], { stdin: 'ignore' });
  // The root's own line: its times are compared by the tests that need them.
  const out = r.stdout.split('\n').filter((l) => l.trim() !== '' && !/^\.d\.\.t\.\.\.\.\.\. \.\/$/.test(l));
  const links = [await findEntries(snapshot, '%n', '! -type d'), await findEntries(replayed, '%n', '! -type d')];
  for (const [p, n] of links[0]!) if (links[1]!.get(p) !== n) out.push(`links of ${JSON.stringify(p)}: ${n} vs ${links[1]!.get(p)}`);
  // Allocation is held to `blocksOf` when given: `btrfs receive` of the same streams, since a
  // version 1 incremental sends a hole that replaces data as zeros, which receive writes too.
  const blocks = [await findEntries(opts.blocksOf ?? snapshot, '%b %s', '-type f'), await findEntries(replayed, '%b %s', '-type f')];
  for (const [p, v] of blocks[0]!) {
    const [b, s] = v.split(' ').map(Number) as [number, number];
    if (b * 512 >= s) continue; // not sparse
    const got = Number(blocks[1]!.get(p)?.split(' ')[0]);
    if (!(got <= b + 128)) out.push(`blocks of sparse ${JSON.stringify(p)}: ${b} vs ${got}`);
  }
  return out;
}

/** replayDiffs of every volume, each difference prefixed with its volume. */
export async function volumesDiffs(set: string, dir: string, volumes = RICH_VOLUMES): Promise<string[]> {
  const out: string[] = [];
  for (const v of volumes) for (const d of await replayDiffs(path.join(set, v), path.join(dir, v))) out.push(`${v}: ${d}`);
  return out;
}
