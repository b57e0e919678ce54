// Real BTRFS for the e2e tests: a loop-mounted image file in a temp dir, with a sandbox LXC
// dir and Subutai-style containers. Every sandbox is unmounted and deleted in teardown.
import { expect } from 'vitest';
import { execa, type Options } from 'execa';
import { mkdtemp, mkdir, writeFile, rm, symlink, link, readFile } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
export const SANDBOX_PREFIX = 'sbk-test-';
/** The test run a sandbox belongs to (set by global setup), so that one run's sweep never unmounts another's. */
const runId = () => process.env.SBK_TEST_RUN ?? String(process.pid);

export interface Sandbox {
  dir: string;
  image: string;
  mnt: string;
  lxcDir: string;
  backupDir: string;
  env: Record<string, string>;
  cleanup(): Promise<void>;
}

/** Why e2e tests cannot run here, or undefined when they can. */
export function e2eUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root (loop mounts need root)';
  if (!existsSync('/sbin/mkfs.btrfs') && !existsSync('/usr/sbin/mkfs.btrfs') && !existsSync('/usr/bin/mkfs.btrfs'))
    return 'btrfs-progs is not installed';
  const fs = readFileSync('/proc/filesystems', 'utf8');
  if (!/\bbtrfs\b/.test(fs)) {
    // The module may load on first mount; let the mount decide.
  }
  return undefined;
}

/**
 * The e2e suites call this at load: they run, or fail loudly. Skipping needs an explicit
 * SBK_SKIP_E2E=1 (never set in CI).
 */
export function e2eMode(): 'run' | 'skip' {
  const why = e2eUnavailable();
  if (!why) return 'run';
  if (process.env.SBK_SKIP_E2E === '1' && !process.env.CI) return 'skip';
  throw new Error(`e2e tests on real BTRFS cannot run: ${why}. Run as root with btrfs-progs installed (SBK_SKIP_E2E=1 skips them outside CI).`);
}

async function run(cmd: string, args: string[], opts: Options = {}) {
  return execa(cmd, args, { stdin: 'ignore', ...opts });
}

/**
 * A directory for a test's filesystem (where the sandbox sweep finds it) with its mount point
 * `mnt`: `mount` runs the mount, `cleanup` unmounts it (when mounted) and removes the directory.
 * A failing mount cleans up before it throws.
 */
export async function scratchMount(mount: (dir: string, mnt: string) => Promise<void>): Promise<{ dir: string; mnt: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), `${SANDBOX_PREFIX}${runId()}-`));
  const mnt = path.join(dir, 'mnt');
  await mkdir(mnt);
  let mounted = false;
  const cleanup = async () => {
    if (mounted) await unmount(mnt);
    mounted = false;
    await rm(dir, { recursive: true, force: true });
  };
  try {
    await mount(dir, mnt);
    mounted = true;
  } catch (err) {
    await cleanup();
    throw err;
  }
  return { dir, mnt, cleanup };
}

export async function makeSandbox(opts: { sizeMiB?: number; name?: string } = {}): Promise<Sandbox> {
  // 114 MiB is about the smallest image mkfs.btrfs accepts with default (DUP) metadata.
  const size = Math.max(opts.sizeMiB ?? 256, 114);
  const { dir, mnt, cleanup } = await scratchMount(async (d, m) => {
    await run('truncate', ['-s', `${size}M`, path.join(d, 'btrfs.img')]);
    await run('mkfs.btrfs', ['-q', '-f', path.join(d, 'btrfs.img')]);
    await run('mount', ['-o', 'loop', path.join(d, 'btrfs.img'), m]);
  });
  const image = path.join(dir, 'btrfs.img');
  try {
    const lxcDir = path.join(mnt, 'lxc');
    await run('btrfs', ['subvolume', 'create', lxcDir]);
    const backupDir = path.join(lxcDir, 'backups');
    return {
      dir,
      image,
      mnt,
      lxcDir,
      backupDir,
      env: { SBK_LXC_DIR: lxcDir, SBK_BACKUP_DIR: backupDir },
      cleanup,
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

export async function unmount(mnt: string): Promise<void> {
  for (let i = 0; i < 10; i++) {
    const r = await execa('umount', [mnt], { reject: false, stdin: 'ignore' });
    if (r.exitCode === 0) return;
    if (/not mounted|no mount point/.test(r.stderr)) return;
    await new Promise((res) => setTimeout(res, 200));
  }
  await execa('umount', ['-l', mnt], { reject: false, stdin: 'ignore' });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Unmounts the sandboxes this run left mounted, and those of runs that died (a safety net for
 * crashed tests; each test also tears down its own). Sandboxes of other live runs are left alone.
 */
export async function sweepSandboxes(): Promise<void> {
  const mounts = readFileSync('/proc/mounts', 'utf8').split('\n');
  const prefix = path.join(os.tmpdir(), SANDBOX_PREFIX);
  const ours = (m: string) => {
    const owner = /^(\d+)-/.exec(m.slice(prefix.length))?.[1];
    return owner === runId() || (owner !== undefined && !alive(Number(owner)));
  };
  const left = mounts.map((l) => l.split(' ')[1] ?? '').filter((m) => m.startsWith(prefix) && ours(m));
  // Deepest first, so nested mounts come off before their parents.
  for (const m of left.sort((a, b) => b.length - a.length)) {
    await stopContainersIn(path.join(m, 'lxc'));
    await unmount(m);
    await rm(path.dirname(m), { recursive: true, force: true });
  }
}

/** Kills the LXC containers running from `lxcDir` (test/helpers/lxc.ts): they keep its image busy. */
async function stopContainersIn(lxcDir: string): Promise<void> {
  if (!existsSync(lxcDir)) return;
  const r = await execa('lxc-ls', ['-P', lxcDir, '--active', '-1'], { reject: false, stdin: 'ignore' });
  if (r.exitCode !== 0) return; // no LXC here: nothing can run
  for (const name of String(r.stdout).split('\n').filter(Boolean)) {
    await execa('lxc-unfreeze', ['-P', lxcDir, '-n', name], { reject: false, stdin: 'ignore' });
    await execa('lxc-stop', ['-P', lxcDir, '-n', name, '-k'], { reject: false, stdin: 'ignore' });
  }
}

export interface ContainerOptions {
  /** LXC 3 key names (lxc.rootfs.path = btrfs:…, lxc.uts.name, lxc.net.0.*). */
  lxc3?: boolean;
  volumes?: string[];
  /** Fill the volumes with sample content (default true). */
  content?: boolean;
}

export function sampleConfig(containerDir: string, name: string, volumes: string[], lxc3 = false): string {
  const others = volumes.filter((v) => v !== 'rootfs');
  const lines = lxc3
    ? [
        `lxc.rootfs.path = btrfs:${containerDir}/rootfs`,
        ...others.map((v) => `lxc.mount.entry = ${containerDir}/${v} ${v} none bind,rw 0 0`),
        `lxc.mount.fstab = ${containerDir}/fstab`,
        `lxc.uts.name = ${name}`,
        `lxc.net.0.type = veth`,
        `lxc.net.0.link = lxcbr0`,
        `lxc.net.0.flags = up`,
        `lxc.net.0.hwaddr = 00:16:3e:5a:2b:01`,
        `lxc.net.0.veth.pair = veth5a2b01`,
        `lxc.arch = amd64`,
      ]
    : [
        `lxc.rootfs = ${containerDir}/rootfs`,
        `lxc.rootfs.mount = ${containerDir}/rootfs`,
        `lxc.rootfs.backend = btrfs`,
        ...others.map((v) => `lxc.mount.entry = ${containerDir}/${v} ${v} none bind,rw 0 0`),
        `lxc.mount.entry = proc proc proc nodev,noexec,nosuid 0 0`,
        `lxc.mount = ${containerDir}/fstab`,
        `lxc.utsname = ${name}`,
        `lxc.network.type = veth`,
        `lxc.network.link = lxcbr0`,
        `lxc.network.flags = up`,
        `lxc.network.hwaddr = 00:16:3e:5a:2b:01`,
        `lxc.network.veth.pair = veth5a2b01`,
        `lxc.arch = amd64`,
      ];
  return `# Subutai container ${name}\n${lines.join('\n')}\n`;
}

/** Makes `<lxc-dir>/<name>` with one subvolume per volume, an LXC config and an fstab. */
export async function makeContainer(sb: Sandbox, name: string, opts: ContainerOptions = {}): Promise<string> {
  const volumes = opts.volumes ?? ['rootfs', 'home', 'opt', 'var'];
  const cdir = path.join(sb.lxcDir, name);
  await mkdir(cdir, { recursive: true });
  for (const v of volumes) await run('btrfs', ['subvolume', 'create', path.join(cdir, v)]);
  await writeFile(path.join(cdir, 'config'), sampleConfig(cdir, name, volumes, opts.lxc3));
  await writeFile(path.join(cdir, 'fstab'), '');
  if (opts.content !== false) await fillSampleContent(cdir, volumes);
  return cdir;
}

/** Real content: regular files, symlinks, hardlinks, xattrs, a sparse file, a fifo, spaces. */
export async function fillSampleContent(cdir: string, volumes: string[]): Promise<void> {
  const has = (v: string) => volumes.includes(v);
  const rootfs = path.join(cdir, 'rootfs');
  await mkdir(path.join(rootfs, 'etc'), { recursive: true });
  await mkdir(path.join(rootfs, 'usr/bin'), { recursive: true });
  await writeFile(path.join(rootfs, 'etc/hostname'), 'c1\n');
  await writeFile(path.join(rootfs, 'etc/file with spaces.conf'), 'key = value\n');
  await writeFile(path.join(rootfs, 'usr/bin/tool'), Buffer.alloc(300 * 1024, 7));
  await symlink('../usr/bin/tool', path.join(rootfs, 'etc/tool-link'));
  await link(path.join(rootfs, 'usr/bin/tool'), path.join(rootfs, 'usr/bin/tool-hardlink'));
  await run('mkfifo', [path.join(rootfs, 'etc/a fifo')]);
  await run('truncate', ['-s', '64M', path.join(rootfs, 'usr/sparse.img')]);
  await writeFile(path.join(rootfs, 'usr/sparse.img'), 'header', { flag: 'r+' });
  await run('setfattr', ['-n', 'user.sbk', '-v', 'hello', path.join(rootfs, 'etc/hostname')]);
  if (has('home')) {
    await mkdir(path.join(cdir, 'home/ubuntu'), { recursive: true });
    await writeFile(path.join(cdir, 'home/ubuntu/.bashrc'), 'export PS1="$ "\n');
    await writeFile(path.join(cdir, 'home/ubuntu/notes ünïcødé.txt'), 'hello\n');
  }
  if (has('opt')) {
    await mkdir(path.join(cdir, 'opt/app'), { recursive: true });
    await writeFile(path.join(cdir, 'opt/app/data.bin'), randomish(1024 * 1024, 1));
  }
  if (has('var')) {
    await mkdir(path.join(cdir, 'var/log'), { recursive: true });
    await mkdir(path.join(cdir, 'var/cache'), { recursive: true });
    await writeFile(path.join(cdir, 'var/log/syslog'), 'boot\n'.repeat(1000));
  }
}

/** Deterministic pseudo-random bytes (incompressible, repeatable). */
export function randomish(size: number, seed: number): Buffer {
  const b = Buffer.alloc(size);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < size; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeInt32LE(x | 0, Math.min(i, size - 4));
  }
  return b;
}

export const BIN = (name: string) => path.join(ROOT, 'bin', name);

/** Runs a shell pipeline with the sbk binaries on PATH and the sandbox's env. */
export async function sh(script: string, sb: Sandbox | undefined, opts: { input?: string | Buffer; env?: Record<string, string> } = {}) {
  const r = await execa('bash', ['-o', 'pipefail', '-c', script], {
    reject: false,
    input: opts.input,
    stdin: opts.input === undefined ? 'ignore' : undefined,
    encoding: 'utf8',
    env: {
      ...process.env,
      PATH: `${path.join(ROOT, 'bin')}:${process.env.PATH}`,
      ...(sb?.env ?? {}),
      ...(opts.env ?? {}),
    },
  } as Options);
  if (process.env.SBK_TEST_DEBUG) process.stderr.write(`$ ${script}\n${String(r.stderr)}\n[exit ${r.exitCode}]\n`);
  return r;
}

/** `rsync -naHAXc --delete` dry run: the list of differences (empty when the trees are identical). */
export async function treeDiff(a: string, b: string): Promise<string[]> {
  const r = await execa('rsync', ['-naHAXc', '--delete', '--out-format=%i %n', `${a}/`, `${b}/`], { stdin: 'ignore' });
  return r.stdout.split('\n').filter((l) => l.trim() !== '' && !/^\.d\.\.t\.\.\.\.\.\. \.\/$/.test(l) && l !== '.d          ./');
}

export async function readJsonLines(file: string): Promise<unknown[]> {
  return (await readFile(file, 'utf8')).split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

/** Snapshots `container` (sbk-snap) and keeps its backup record in `<sb.dir>/<file>`; returns that path. */
export async function snapToFile(sb: Sandbox, container: string, file = 'rec.ndjson'): Promise<string> {
  const r = await sh(`sbk-snap ${container}`, sb);
  expect(r.exitCode, String(r.stderr)).toBe(0);
  const records = path.join(sb.dir, file);
  await writeFile(records, String(r.stdout));
  return records;
}
