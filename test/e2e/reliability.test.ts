// Faults injected on real BTRFS: locks, SIGKILL of any stage at any moment, SIGINT/SIGTERM,
// a downstream stage that dies, a full restore target. After each: nothing that looks
// finished is half-done, and the next run works and its chain restores.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { execa, type ResultPromise } from 'execa';
import path from 'node:path';
import { e2eMode, makeSandbox, makeContainer, randomish, sh, treeDiff, ROOT, type Sandbox } from '../helpers/sandbox.js';
import { lockTaken, signalHandlersInstalled, until } from '../helpers/wait.js';

const mode = e2eMode();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms)); // a kill's moment: the subject of a trial

async function ls(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).sort();
}

/** Every archive under a final name verifies; every confirmed set has its archive. */
async function checkInvariants(sb: Sandbox, container: string): Promise<void> {
  const archives = (await ls(sb.backupDir)).filter((n) => n.startsWith(`${container}_`) && n.endsWith('.tar.gz'));
  if (archives.length) {
    const v = await sh(`sbk-unpack --verify ${archives.map((a) => path.join(sb.backupDir, a)).join(' ')}`, sb);
    expect(v.stderr, 'every archive under a final name is whole').not.toMatch(/fail|corrupt|truncated/i);
    expect(v.exitCode).toBe(0);
  }
  for (const set of await ls(path.join(sb.backupDir, container))) {
    if (set.startsWith('.')) continue;
    const confirmed = (await ls(path.join(sb.backupDir, container, set))).includes('.sbk-confirmed');
    if (confirmed) expect(archives, `confirmed set ${set} has its archive`).toContain(`${container}_${set}.tar.gz`);
  }
}

/** The pids of a bash pipeline's stages, by binary name. */
async function stagePids(bashPid: number): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const r = await execa('pgrep', ['-P', String(bashPid)], { reject: false });
  for (const pid of r.stdout.split('\n').filter(Boolean).map(Number)) {
    const cmd = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    const m = /bin\/(sbk-[a-z]+)/.exec(cmd);
    if (m) out.set(m[1]!, pid);
  }
  return out;
}

function pipeline(script: string, sb: Sandbox): ResultPromise {
  return execa('bash', ['-o', 'pipefail', '-c', script], {
    reject: false,
    stdin: 'ignore',
    env: { ...process.env, PATH: `${path.join(ROOT, 'bin')}:${process.env.PATH}`, ...sb.env },
  });
}

/** Another process holding a container's lock until `release()` (its stdin ends) or its death. */
function holdLock(sb: Sandbox, container: string, holder: string): { child: ResultPromise; held: Promise<void>; release: () => void } {
  const child = execa('node', ['-e', `
    const { acquireLock, backupLockFile } = await import(${JSON.stringify(path.join(ROOT, 'dist/system/lock.js'))});
    await acquireLock(backupLockFile(${JSON.stringify(sb.backupDir)}, ${JSON.stringify(container)}), { holder: ${JSON.stringify(holder)} });
    console.log('held'); process.stdin.resume(); process.stdin.on('end', () => process.exit(0));`], { stdin: 'pipe', buffer: false, reject: false });
  const held = new Promise<void>((r) => child.stdout!.once('data', () => r()));
  return { child, held, release: () => void child.stdin!.end() };
}

describe.skipIf(mode === 'skip')('reliability on loopback BTRFS', () => {
  let sb: Sandbox;
  let c1 = '';

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 768 });
    c1 = await makeContainer(sb, 'c1');
    // Enough incompressible data that a backup takes a second or two: time to kill it.
    await writeFile(path.join(c1, 'opt/payload.bin'), randomish(48 * 1024 * 1024, 5));
    await makeContainer(sb, 'c2', { volumes: ['rootfs'], content: false });
    await writeFile(path.join(sb.lxcDir, 'c2/rootfs/f'), 'c2\n');
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  describe('locks', () => {
    it('a second backup of the same container fails fast naming the holder, or waits with --wait', async () => {
      // Hold c1's lock from another process until released.
      const { child: holder, held, release } = holdLock(sb, 'c1', 'the lock test');
      await held;
      const busy = await sh('sbk-snap c1', sb);
      expect(busy.exitCode).toBe(7);
      expect(busy.stderr).toMatch(/locked by the lock test \(pid \d+/);
      // It failed without waiting for the holder, which still holds the lock.
      expect(holder.exitCode ?? null).toBeNull();
      // Another container is not blocked.
      const other = await sh('sbk-snap c2 | sbk-send | sbk-pack', sb);
      expect(other.exitCode).toBe(0);
      // --wait outlasts the holder: released once sbk-snap waits for the lock.
      const waiting = pipeline('sbk-snap --wait=60 c1 > /dev/null', sb);
      const lockFile = path.join(sb.backupDir, '.locks', 'c1.lock');
      await until(async () => (await execa('pgrep', ['-f', `^flock .*-w.*${lockFile}`], { reject: false })).exitCode === 0, 'sbk-snap to wait for the lock');
      release();
      await holder;
      expect((await waiting).exitCode).toBe(0);
    });

    it('a SIGKILLed holder leaves no stale lock', async () => {
      const { child: holder, held } = holdLock(sb, 'c2', 'a doomed holder');
      await held;
      expect((await sh('sbk-snap c2 > /dev/null', sb)).exitCode).toBe(7);
      holder.kill('SIGKILL');
      await holder;
      const lockFile = path.join(sb.backupDir, '.locks', 'c2.lock');
      await until(async () => !(await lockTaken(lockFile)), 'the dead holder\'s lock to be free', 5000);
      expect((await sh('sbk-snap --wait=5 c2 | sbk-send | sbk-pack', sb)).exitCode).toBe(0);
    });
  });

  describe('SIGKILL of any stage at any moment of a backup', () => {
    const trials: [string, number][] = [
      ['sbk-snap', 30],
      ['sbk-send', 300],
      ['sbk-send', 900],
      ['sbk-pack', 200],
      ['sbk-pack', 700],
      ['sbk-pack', 1300],
    ];
    it.each(trials)('kill -9 %s after %i ms: nothing half-done looks finished', async (stage, delay) => {
      const run = pipeline('sbk-snap --full c1 | sbk-send | sbk-pack', sb);
      await sleep(delay);
      const pids = await stagePids(run.pid!);
      const pid = pids.get(stage);
      if (pid) process.kill(pid, 'SIGKILL');
      await run;
      await checkInvariants(sb, 'c1');
    });

    it('the next backup works and its chain restores identical to the snapshots', async () => {
      const full = await sh('sbk-snap --full c1 | sbk-send | sbk-pack', sb);
      expect(full.exitCode).toBe(0);
      await writeFile(path.join(c1, 'home/after-kills'), 'x\n');
      const incr = await sh('sbk-snap c1 > "$T/r.ndjson" && sbk-changelog < "$T/r.ndjson" | sbk-send | sbk-pack', sb, { env: { T: sb.dir } });
      expect(incr.exitCode).toBe(0);
      const rec = JSON.parse(await readFile(path.join(sb.dir, 'r.ndjson'), 'utf8'));
      expect(rec.parent.name).toBe(path.basename(full.stdout.trim(), '.tar.gz'));
      const r = await sh('sbk-plan c1 | sbk-unpack --as after-kills', sb);
      expect(r.exitCode).toBe(0);
      for (const v of ['rootfs', 'home', 'opt', 'var'])
        expect(await treeDiff(path.join(rec.set, v), path.join(sb.lxcDir, 'after-kills', v))).toEqual([]);
      await checkInvariants(sb, 'c1');
    });
  });

  describe('signals', () => {
    it('SIGTERM to sbk-pack: exit 143, no temporary file, nothing stored', async () => {
      const before = await ls(sb.backupDir);
      const run = pipeline('sbk-snap --full c1 | sbk-send | sbk-pack', sb);
      // Stopped once it writes the archive (its temporary file is there), its handlers set.
      let pack: number | undefined;
      await until(async () => {
        pack = (await stagePids(run.pid!)).get('sbk-pack');
        return pack !== undefined && (await ls(sb.backupDir)).some((n) => n.includes('.tmp-') && !before.includes(n));
      }, 'sbk-pack to write the archive', 30_000);
      expect(pack).toBeDefined();
      await signalHandlersInstalled(pack!);
      process.kill(pack!, 'SIGTERM');
      const r = await run;
      expect(r.exitCode).toBe(143);
      expect(await ls(sb.backupDir)).toEqual(before);
    });

    it('SIGINT to sbk-send: exit 130 and sbk-pack stores nothing', async () => {
      const before = await ls(sb.backupDir);
      const run = execa('bash', ['-c', 'sbk-snap --full c1 | sbk-send | sbk-pack; echo "${PIPESTATUS[@]}"'], {
        reject: false,
        stdin: 'ignore',
        env: { ...process.env, PATH: `${path.join(ROOT, 'bin')}:${process.env.PATH}`, ...sb.env },
      });
      // Stopped once it runs with its handlers set (before or while it sends: either is a cut).
      let send: number | undefined;
      await until(async () => (send = (await stagePids(run.pid!)).get('sbk-send')) !== undefined, 'sbk-send to start', 30_000);
      expect(send).toBeDefined();
      await signalHandlersInstalled(send!);
      process.kill(send!, 'SIGINT');
      const r = await run;
      const [, sendExit, packExit] = String(r.stdout).trim().split(' ').map(Number);
      expect(sendExit).toBe(130);
      // Cut before its first byte or inside an archive: sbk-pack sees no input (3) or a truncated one (4).
      expect([3, 4]).toContain(packExit);
      expect(await ls(sb.backupDir)).toEqual(before);
    });
  });

  describe('broken pipes', () => {
    it('a downstream stage that dies stops the upstream ones promptly, with a non-zero exit', async () => {
      const r = await sh('sbk-snap --full c1 | sbk-send | head -c 1000 > /dev/null; echo "${PIPESTATUS[@]}"', sb);
      const [snapExit, sendExit, headExit] = String(r.stdout).trim().split(' ').map(Number);
      expect(snapExit).toBe(0);
      expect(headExit).toBe(0);
      expect(sendExit, r.stderr).toBe(141); // 128 + SIGPIPE: a pipeline tells it from the stage that failed
      // 141, not 0: it stopped on the broken pipe rather than sending the whole volume.
      expect(r.stderr).toMatch(/sbk-send: the reader of stdout went away/);
      const p = await sh('sbk-snap --full c1 | sbk-send | sbk-pack -o - | head -c 100 > /dev/null; echo "${PIPESTATUS[@]}"', sb);
      expect(String(p.stdout).trim().split(' ').map(Number)[2]).toBe(141);
    });

    it('sbk-plan --list | head -1 exits quietly', async () => {
      const r = await sh('sbk-plan c1 --list --json | head -1; echo "${PIPESTATUS[@]}"', sb);
      expect(String(r.stdout).trim().split('\n').at(-1)).toBe('0 0');
      expect(r.stderr).toBe('');
    });
  });

  describe('SIGKILL during a restore', () => {
    it('leaves nothing at the target; the next restore removes the leftovers and succeeds', async () => {
      const count = async () => (await execa('btrfs', ['subvolume', 'list', sb.mnt])).stdout.split('\n').filter(Boolean).length;
      const before = await count();
      const run = pipeline('sbk-plan c1 | sbk-unpack --as killed', sb);
      // Killed once its temporary directory exists (the restore is under way), not after a fixed
      // time: a fast machine may finish the restore before any fixed sleep is over.
      let unpack: number | undefined;
      const underWay = async () => {
        if ((await ls(sb.lxcDir)).some((n) => n.startsWith('.sbk-restore-killed-'))) unpack = (await stagePids(run.pid!)).get('sbk-unpack');
        return unpack !== undefined;
      };
      await until(underWay, 'the restore to start', 20_000, 10).catch(() => {});
      expect(unpack).toBeDefined();
      process.kill(unpack!, 'SIGKILL');
      await run;
      expect(await ls(sb.lxcDir)).not.toContain('killed');
      const again = await sh('sbk-plan c1 | sbk-unpack --as killed', sb);
      expect(again.exitCode).toBe(0);
      expect((await ls(sb.lxcDir)).filter((n) => n.startsWith('.sbk-restore-'))).toEqual([]);
      await sh(`for v in rootfs home opt var; do btrfs subvolume delete -c ${sb.lxcDir}/killed/$v; done`, sb);
      expect(await count()).toBe(before);
    });
  });

  describe('a full restore target', () => {
    let small: Sandbox;
    beforeAll(async () => {
      small = await makeSandbox({ sizeMiB: 160 });
    });
    afterAll(async () => {
      await small?.cleanup();
    });

    it('fails cleanly and leaves nothing behind', async () => {
      // Leave far less room than the container needs (48 MiB of incompressible data).
      await execa('bash', ['-c', `dd if=/dev/urandom of=${small.mnt}/filler bs=1M count=90 status=none; sync`]);
      const env = { SBK_LXC_DIR: small.lxcDir, SBK_BACKUP_DIR: sb.backupDir };
      const r = await sh(`sbk-plan c1 --dir ${sb.backupDir} | sbk-unpack --as big`, undefined, { env });
      expect(r.exitCode).not.toBe(0);
      expect(r.stderr).toMatch(/no space left|ENOSPC|No space/i);
      expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
      expect((await ls(small.lxcDir)).filter((n) => n !== '.sbk-locks')).toEqual([]);
      const subs = (await execa('btrfs', ['subvolume', 'list', small.mnt])).stdout.split('\n').filter(Boolean);
      expect(subs.map((l) => l.split(' ').at(-1))).toEqual(['lxc']);
    });
  });
});
