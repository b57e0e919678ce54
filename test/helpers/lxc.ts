// Real LXC containers for the e2e tests, inside a loop-mounted BTRFS sandbox: the busybox
// template (`lxc-create -B btrfs`), given the Subutai layout (home, opt and var subvolumes bound
// in with lxc.mount.entry), no network (lxc.net.0.type = empty), unconfined. Every container a
// test creates is stopped and destroyed in teardown, even when the test fails: a container is
// registered before it is created or started, and teardown runs before the sandbox is unmounted
// (a running container would keep the image busy).
import { execa } from 'execa';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { makeSandbox, type Sandbox } from './sandbox.js';

/** The volumes besides rootfs that a Subutai container has, each a subvolume bound in. */
export const LXC_EXTRA_VOLUMES = ['home', 'opt', 'var'] as const;

const TIMEOUT_S = 60;

/** Why real LXC containers cannot run here, or undefined when they can. */
export function lxcUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'not root';
  for (const tool of ['lxc-create', 'lxc-start', 'lxc-info', 'lxc-wait', 'lxc-stop', 'lxc-destroy'])
    if (!['/usr/bin', '/usr/sbin', '/bin', '/sbin'].some((d) => existsSync(path.join(d, tool))))
      return `${tool} is not installed (apt-get install lxc)`;
  if (!existsSync('/usr/share/lxc/templates/lxc-busybox')) return 'the LXC busybox template is missing (apt-get install lxc)';
  if (!['/bin/busybox', '/usr/bin/busybox'].some((p) => existsSync(p))) return 'busybox is not installed (apt-get install busybox-static)';
  // LXC needs a cgroup hierarchy it can use: cgroup v2, or v1 (with a freezer, which lxc-freeze
  // and a clean stop use).
  const mounts = readFileSync('/proc/mounts', 'utf8');
  const v2 = /^\S+ \S+ cgroup2 /m.test(mounts);
  const freezer = /^\S+ \S+ cgroup \S*\bfreezer\b/m.test(mounts);
  if (!v2 && !freezer) return 'no usable cgroup hierarchy is mounted (cgroup2, or cgroup v1 with a freezer)';
  return undefined;
}

/**
 * The suites that need LXC call this at load: they run, or fail loudly; never a silent skip.
 * Skipping needs an explicit SBK_SKIP_E2E=1 outside CI, as for the other e2e tests.
 */
export function lxcMode(): 'run' | 'skip' {
  const why = lxcUnavailable();
  if (!why) return 'run';
  if (process.env.SBK_SKIP_E2E === '1' && !process.env.CI) return 'skip';
  throw new Error(`e2e tests with real LXC containers cannot run: ${why} (SBK_SKIP_E2E=1 skips them outside CI).`);
}

export type LxcState = 'STOPPED' | 'STARTING' | 'RUNNING' | 'STOPPING' | 'ABORTING' | 'FREEZING' | 'FROZEN' | 'THAWED' | 'ABSENT';

export interface LxcHost {
  lxcDir: string;
  /** Creates a stopped busybox container with the Subutai layout; returns its directory. */
  create(name: string): Promise<string>;
  /** Starts it and waits until LXC reports it RUNNING. */
  start(name: string): Promise<void>;
  /** Stops it (cleanly, then by force) and waits until it is STOPPED. */
  stop(name: string): Promise<void>;
  state(name: string): Promise<LxcState>;
  /** A container something else makes or starts (sbk-unpack --start): stopped and destroyed in teardown. */
  track(name: string): void;
  /** The host pid of the running container's init (a new one after a stop and start). */
  initPid(name: string): Promise<number>;
  /** Runs a command inside the running container. */
  attach(name: string, cmd: string[]): Promise<string>;
  /** Stops and destroys one container (thawed first if frozen). Never throws. */
  destroy(name: string): Promise<void>;
  /** Stops and destroys every container this host created or started. Never throws. */
  cleanup(): Promise<void>;
}

const lxc = (cmd: string, args: string[], timeoutS = TIMEOUT_S) =>
  execa(cmd, args, { stdin: 'ignore', reject: false, encoding: 'utf8', timeout: timeoutS * 1000 + 10_000 });

/** What LXC says of a container in `lxcDir`: its state, or ABSENT when it has no container there. */
export async function lxcState(lxcDir: string, name: string): Promise<LxcState> {
  const r = await lxc('lxc-info', ['-P', lxcDir, '-n', name, '-s', '-H']);
  if (r.exitCode === 0) return r.stdout.trim() as LxcState;
  if (/doesn't exist/.test(r.stderr)) return 'ABSENT';
  throw new Error(`lxc-info -P ${lxcDir} -n ${name}: ${r.stderr.trim() || `exit ${r.exitCode}`}`);
}

/** Containers in `lxcDir` for tests in `sb`. */
export function lxcHost(lxcDir: string): LxcHost {
  const ours = new Set<string>();
  const must = async (cmd: string, args: string[], timeoutS?: number) => {
    const r = await lxc(cmd, args, timeoutS);
    if (r.exitCode !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.exitCode}): ${r.stderr.trim()}`);
    return r;
  };
  const host: LxcHost = {
    lxcDir,
    async create(name) {
      ours.add(name);
      await must('lxc-create', ['-P', lxcDir, '-t', 'busybox', '-n', name, '-B', 'btrfs']);
      const cdir = path.join(lxcDir, name);
      for (const v of LXC_EXTRA_VOLUMES) {
        await must('btrfs', ['subvolume', 'create', path.join(cdir, v)]);
        await writeFile(path.join(cdir, v, 'sbk-marker'), `${name} ${v}\n`);
        // The mount point in the rootfs (Subutai's entries have no create=dir).
        await mkdir(path.join(cdir, 'rootfs', v), { recursive: true });
      }
      // The template's network (a veth on lxcbr0, which this host may not have) and its AppArmor
      // profile give way to no network and no confinement; the rest of its config stays.
      const kept = (await readFile(path.join(cdir, 'config'), 'utf8'))
        .split('\n')
        .filter((l) => !/^\s*lxc\.(net|network|apparmor)\./.test(l));
      const added = [
        ...LXC_EXTRA_VOLUMES.map((v) => `lxc.mount.entry = ${cdir}/${v} ${v} none bind,rw 0 0`),
        'lxc.net.0.type = empty',
        'lxc.apparmor.profile = unconfined',
      ];
      await writeFile(path.join(cdir, 'config'), `${kept.join('\n').trimEnd()}\n${added.join('\n')}\n`);
      return cdir;
    },
    async start(name) {
      ours.add(name); // before the start: teardown stops it whatever happens next
      const log = path.join(lxcDir, `.${name}.lxc-start.log`);
      const r = await lxc('lxc-start', ['-P', lxcDir, '-n', name, '-l', 'INFO', '-o', log]);
      if (r.exitCode !== 0) {
        const tail = existsSync(log) ? (await readFile(log, 'utf8')).split('\n').slice(-15).join('\n') : '';
        throw new Error(`lxc-start -P ${lxcDir} -n ${name} failed (exit ${r.exitCode}): ${r.stderr.trim()}\n${tail}`);
      }
      await must('lxc-wait', ['-P', lxcDir, '-n', name, '-s', 'RUNNING', '-t', String(TIMEOUT_S)]);
    },
    async stop(name) {
      const r = await lxc('lxc-stop', ['-P', lxcDir, '-n', name, '-t', '30']);
      // Exit 2: it was not running. Anything else left running is killed.
      if (r.exitCode !== 0 && (await lxcState(lxcDir, name)) !== 'STOPPED')
        await lxc('lxc-stop', ['-P', lxcDir, '-n', name, '-k']);
      await must('lxc-wait', ['-P', lxcDir, '-n', name, '-s', 'STOPPED', '-t', String(TIMEOUT_S)]);
    },
    state: (name) => lxcState(lxcDir, name),
    track(name) {
      ours.add(name);
    },
    async initPid(name) {
      return Number((await must('lxc-info', ['-P', lxcDir, '-n', name, '-p', '-H'])).stdout.trim());
    },
    async attach(name, cmd) {
      return (await must('lxc-attach', ['-P', lxcDir, '-n', name, '--', ...cmd])).stdout;
    },
    async destroy(name) {
      try {
        const s = await lxcState(lxcDir, name).catch(() => 'UNKNOWN');
        if (s === 'ABSENT') return;
        if (s === 'FROZEN' || s === 'FREEZING') await lxc('lxc-unfreeze', ['-P', lxcDir, '-n', name]);
        if (s !== 'STOPPED') {
          await lxc('lxc-stop', ['-P', lxcDir, '-n', name, '-k']);
          await lxc('lxc-wait', ['-P', lxcDir, '-n', name, '-s', 'STOPPED', '-t', String(TIMEOUT_S)]);
        }
        // The extra volumes first: lxc-destroy removes the rootfs subvolume, then the directory.
        for (const v of LXC_EXTRA_VOLUMES) {
          const p = path.join(lxcDir, name, v);
          if (existsSync(p)) await lxc('btrfs', ['subvolume', 'delete', p]);
        }
        const d = await lxc('lxc-destroy', ['-P', lxcDir, '-n', name]);
        if (d.exitCode !== 0) process.stderr.write(`lxc teardown: lxc-destroy ${name}: ${d.stderr.trim()}\n`);
      } catch (err) {
        process.stderr.write(`lxc teardown: ${name}: ${(err as Error).message}\n`);
      }
    },
    async cleanup() {
      for (const name of ours) await host.destroy(name);
      ours.clear();
    },
  };
  return host;
}

export interface LxcSandbox extends Sandbox {
  lxc: LxcHost;
}

/** A BTRFS sandbox whose cleanup stops and destroys its LXC containers before unmounting. */
export async function makeLxcSandbox(opts: { sizeMiB?: number } = {}): Promise<LxcSandbox> {
  const sb = await makeSandbox({ sizeMiB: opts.sizeMiB ?? 512 });
  const host = lxcHost(sb.lxcDir);
  return {
    ...sb,
    lxc: host,
    async cleanup() {
      try {
        await host.cleanup();
      } finally {
        await sb.cleanup();
      }
    },
  };
}
