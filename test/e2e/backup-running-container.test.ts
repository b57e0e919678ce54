// sbk-snap and a container that LXC runs (real busybox containers, test/helpers/lxc.ts): by
// default it is frozen for the instant of its snapshots, so that a writer inside it that puts the
// same counter into /var and then /opt is caught at one moment in every snapshot set; it is
// never left frozen, not even when sbk-snap is SIGKILLed during the freeze; a freeze past
// --freeze-timeout, a signal or a failing snapshot thaws it and fails that backup; --no-freeze
// takes the set live; --stop stops and starts it again (also when the snapshots fail); without
// LXC a container is snapshotted as before, and --freeze/--stop say they cannot be done; --all
// skips Subutai templates.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execa } from 'execa';
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, appendFile, symlink } from 'node:fs/promises';
import path from 'node:path';
import { BIN, makeContainer, makeSandbox, sh, type Sandbox } from '../helpers/sandbox.js';
import { lxcMode, makeLxcSandbox, type LxcSandbox } from '../helpers/lxc.js';
import { lockTaken, until } from '../helpers/wait.js';
import { backupLockFile } from '../../src/core/layout.js';

const mode = lxcMode();

interface Taken {
  set: string;
  consistency?: string;
  frozenMs?: number;
}

const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe.skipIf(mode === 'skip')('sbk-snap and a running LXC container', () => {
  let sb: LxcSandbox;
  const cdir = () => path.join(sb.lxcDir, 'c1');

  beforeAll(async () => {
    sb = await makeLxcSandbox({ sizeMiB: 768 });
    await sb.lxc.create('c1');
    await sb.lxc.start('c1');
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  /** One sbk-snap run: its record, exit code and stderr. */
  async function snap(args: string, env: Record<string, string> = {}) {
    const r = await sh(`sbk-snap ${args}`, sb, { env });
    const record = r.stdout.trim() ? (JSON.parse(r.stdout.trim().split('\n')[0]!) as Taken) : undefined;
    return { ...r, record };
  }

  /** The sets and partial sets of c1 in the backup dir. */
  const setsOf = async (container = 'c1') => (await readdir(path.join(sb.backupDir, container)).catch(() => [] as string[])).sort();

  /**
   * A writer inside the container: the same counter renamed into /var/pair, then into /opt/pair,
   * as fast as busybox goes, until /var/stop appears. Resolves once it has written.
   */
  async function startWriter() {
    const loop = 'i=0; while [ ! -e /var/stop ]; do i=$((i+1)); echo $i > /var/.pair; mv /var/.pair /var/pair; echo $i > /opt/.pair; mv /opt/.pair /opt/pair; done';
    const child = execa('lxc-attach', ['-P', sb.lxcDir, '-n', 'c1', '--', 'sh', '-c', loop], { reject: false, stdin: 'ignore' });
    await until(() => existsSync(path.join(cdir(), 'opt', 'pair')), 'the writer to write');
    return {
      async stop() {
        await appendFile(path.join(cdir(), 'var', 'stop'), '');
        await child;
        await execa('rm', ['-f', path.join(cdir(), 'var', 'stop')]);
      },
      kill: () => child.kill('SIGKILL'),
    };
  }

  const counterIn = async (set: string, volume: string) => Number((await readFile(path.join(set, volume, 'pair'), 'utf8')).trim());

  it('frozen by default: every set holds /var and /opt at the same write (or one apart) while a writer runs; the record says frozen, -v for how long', async () => {
    const writer = await startWriter();
    try {
      let last = 0;
      for (let round = 0; round < 6; round++) {
        const r = await snap('-v c1');
        expect(r.exitCode, r.stderr).toBe(0);
        expect(r.record!.consistency).toBe('frozen');
        expect(Number.isSafeInteger(r.record!.frozenMs)).toBe(true);
        expect(r.stderr).toMatch(new RegExp(`c1: snapshots in \\S+ \\(frozen for ${r.record!.frozenMs} ms\\)`));
        const v = await counterIn(r.record!.set, 'var');
        const o = await counterIn(r.record!.set, 'opt');
        expect([0, 1], `set ${round}: /var at ${v}, /opt at ${o}`).toContain(v - o);
        // The writer went on between the backups: each set is another moment.
        expect(o).toBeGreaterThan(last);
        last = o;
        expect(await sb.lxc.state('c1')).toBe('RUNNING');
      }
    } finally {
      await writer.stop();
    }
  }, 600_000);

  it('--no-freeze takes the set live, and the record says so', async () => {
    const writer = await startWriter();
    try {
      const r = await snap('-v --no-freeze c1');
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.record!.consistency).toBe('live');
      expect(r.record!.frozenMs).toBeUndefined();
      expect(r.stderr).toMatch(/c1: snapshots in \S+ \(live: taken while it ran, not frozen\)/);
    } finally {
      await writer.stop();
    }
  });

  it('SIGKILL of sbk-snap at random moments of a frozen backup: the container runs again within a few seconds, every time; no stale lock; the next backup works', async () => {
    const lock = backupLockFile(sb.backupDir, 'c1');
    let killedFrozen = 0;
    for (let round = 0; round < 15; round++) {
      const child = execa(BIN('sbk-snap'), ['c1'], {
        reject: false,
        stdin: 'ignore',
        env: { ...sb.env, SBK_TEST_HOLD_MS: '1000' },
      });
      try {
        await until(async () => (await sb.lxc.state('c1')) === 'FROZEN', `c1 frozen (round ${round})`, 60_000, 20);
        await pause(Math.floor(Math.random() * 900));
        if ((await sb.lxc.state('c1')) === 'FROZEN') killedFrozen++;
      } finally {
        child.kill('SIGKILL');
      }
      const r = await child;
      expect(r.signal, `round ${round}`).toBe('SIGKILL');
      await until(async () => (await sb.lxc.state('c1')) === 'RUNNING', `c1 running again after round ${round}`, 5_000, 20);
      await until(async () => !(await lockTaken(lock)), `the lock free after round ${round}`, 5_000, 20);
    }
    expect(killedFrozen).toBeGreaterThan(0);
    // The watchdogs are gone with their work done.
    expect((await execa('pgrep', ['-f', 'sbk-snap-watchdog'], { reject: false })).stdout).toBe('');
    const r = await snap('c1');
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.record!.consistency).toBe('frozen');
    expect((await setsOf()).filter((n) => n.includes('.partial-'))).toEqual([]);
    expect(await sb.lxc.state('c1')).toBe('RUNNING');
  }, 900_000); // fifteen backups on a busy machine

  it('SIGTERM during the freeze: thawed before sbk-snap exits (143), no set left', async () => {
    const before = await setsOf();
    const child = execa(BIN('sbk-snap'), ['c1'], { reject: false, stdin: 'ignore', env: { ...sb.env, SBK_TEST_HOLD_MS: '30000' } });
    try {
      await until(async () => (await sb.lxc.state('c1')) === 'FROZEN', 'c1 frozen', 60_000, 20);
    } finally {
      child.kill('SIGTERM');
    }
    const r = await child;
    expect(r.exitCode, r.stderr).toBe(143);
    expect(await sb.lxc.state('c1')).toBe('RUNNING');
    expect(await setsOf()).toEqual(before);
  });

  it('a freeze past --freeze-timeout thaws the container and fails that backup (exit 1, one line); no set is left', async () => {
    const before = await setsOf();
    const r = await snap('-q --freeze-timeout 1 c1', { SBK_TEST_HOLD_MS: '30000' });
    expect(r.exitCode).toBe(1);
    expect(r.stderr.trim().split('\n')).toEqual([
      'sbk-snap: c1: frozen for longer than --freeze-timeout 1 s: thawed, no backup made (raise --freeze-timeout, or use --stop or --no-freeze)',
    ]);
    expect(r.stdout).toBe('');
    expect(await sb.lxc.state('c1')).toBe('RUNNING');
    expect(await setsOf()).toEqual(before);
  });

  it('--stop stops a running container for its snapshots and starts it again; a stopped one stays stopped', async () => {
    const initBefore = await sb.lxc.initPid('c1');
    const r = await snap('-v --stop c1');
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.record!.consistency).toBe('stopped');
    expect(r.stderr).toMatch(/c1: started again \(it was RUNNING\)/);
    expect(await sb.lxc.state('c1')).toBe('RUNNING');
    expect(await sb.lxc.initPid('c1')).not.toBe(initBefore); // it really was stopped and started
    expect(await sb.lxc.attach('c1', ['cat', '/opt/sbk-marker'])).toBe('c1 opt');

    await sb.lxc.stop('c1');
    const s = await snap('-v --stop c1');
    expect(s.exitCode, s.stderr).toBe(0);
    expect(s.record!.consistency).toBe('stopped');
    expect(s.stderr).not.toMatch(/started again|stopping/);
    expect(await sb.lxc.state('c1')).toBe('STOPPED');
    // Stopped, with no option at all: stopped too.
    const d = await snap('c1');
    expect(d.record!.consistency).toBe('stopped');
    await sb.lxc.start('c1');
  });

  it('SIGKILL of sbk-snap --stop while the container is down: it is started again; the next backup works', async () => {
    const child = execa(BIN('sbk-snap'), ['--stop', 'c1'], { reject: false, stdin: 'ignore', env: { ...sb.env, SBK_TEST_HOLD_MS: '30000' } });
    try {
      await until(async () => (await sb.lxc.state('c1')) === 'STOPPED', 'c1 stopped by sbk-snap --stop', 90_000, 50);
    } finally {
      child.kill('SIGKILL');
    }
    expect((await child).signal).toBe('SIGKILL');
    await until(async () => (await sb.lxc.state('c1')) === 'RUNNING', 'c1 started again by the guard', 60_000, 50);
    await until(async () => (await execa('pgrep', ['-f', 'sbk-snap-start-guard'], { reject: false })).stdout === '', 'the guard gone', 60_000);
    const r = await snap('c1');
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.record!.consistency).toBe('frozen');
  });

  it('a failing snapshot thaws the container (frozen) or starts it again (--stop)', async () => {
    // A volume on another file system: it is a subvolume (the root of that one), but a snapshot
    // of it cannot be made in the backup dir (a cross-device snapshot), after c2 is stopped.
    const other: Sandbox = await makeSandbox({ sizeMiB: 128 });
    const c2 = await sb.lxc.create('c2');
    const extra = path.join(c2, 'extra');
    try {
      await mkdir(extra);
      await mkdir(path.join(c2, 'rootfs', 'extra'));
      await execa('mount', ['--bind', other.mnt, extra]);
      await appendFile(path.join(c2, 'config'), `lxc.mount.entry = ${extra} extra none bind,rw 0 0\n`);
      await sb.lxc.start('c2');
      // Frozen, the snapshots fail: thawed all the same.
      const frozen = await snap('c2');
      expect(frozen.exitCode).toBe(1);
      expect(frozen.stderr).toMatch(/^sbk-snap: c2: .*extra/m);
      expect(await sb.lxc.state('c2')).toBe('RUNNING');
      const initBefore = await sb.lxc.initPid('c2');
      const r = await snap('-v --stop c2');
      expect(r.exitCode).toBe(1);
      expect(r.stderr).toMatch(/^sbk-snap: c2: .*extra/m);
      expect(r.stdout).toBe('');
      expect(await sb.lxc.state('c2')).toBe('RUNNING');
      expect(await sb.lxc.initPid('c2')).not.toBe(initBefore);
      expect(await setsOf('c2')).toEqual([]);
    } finally {
      await sb.lxc.stop('c2').catch(() => {});
      await execa('umount', [extra], { reject: false });
      await sb.lxc.destroy('c2');
      await other.cleanup();
    }
  });

  it('without LXC a container is snapshotted as before; --freeze and --stop say they cannot be done', async () => {
    // A PATH with every tool of this host but LXC's.
    const bin = path.join(sb.dir, 'no-lxc-bin');
    await mkdir(bin);
    for (const dir of ['/usr/bin', '/usr/sbin'])
      for (const t of await readdir(dir))
        if (!t.startsWith('lxc-') && !existsSync(path.join(bin, t))) await symlink(path.join(dir, t), path.join(bin, t));
    const env = { PATH: `${path.dirname(BIN('sbk-snap'))}:${bin}` };
    const r = await snap('c1', env);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.record!.consistency).toBe('stopped');
    for (const opt of ['freeze', 'stop']) {
      const f = await snap(`-q --${opt} c1`, env);
      expect(f.exitCode).toBe(1);
      expect(f.stderr.trim().split('\n')).toEqual([`sbk-snap: c1: --${opt}: cannot ${opt} c1: LXC is not installed (no lxc-info)`]);
    }
    expect(await sb.lxc.state('c1')).toBe('RUNNING');
  });

  it('--all skips a Subutai template (a read-only rootfs), and says so with -v', async () => {
    const tdir = await makeContainer(sb, 'template1', { content: false });
    await execa('btrfs', ['property', 'set', '-ts', path.join(tdir, 'rootfs'), 'ro', 'true']);
    try {
      const r = await sh('sbk-snap -v --all', sb);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/skipping template1: a Subutai template \(its rootfs is read-only\)/);
      const records = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as { container: string; consistency: string });
      expect(records.map((x) => [x.container, x.consistency])).toEqual([['c1', 'frozen']]);
      // Named, a template is backed up as any container.
      const named = await snap('template1');
      expect(named.exitCode, named.stderr).toBe(0);
      expect(named.record!.consistency).toBe('stopped');
    } finally {
      await execa('btrfs', ['property', 'set', '-ts', path.join(tdir, 'rootfs'), 'ro', 'false'], { reject: false });
    }
  });
});
