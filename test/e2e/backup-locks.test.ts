// The container's lock is held until a run has cleaned up, even when the run is stopped by a
// signal: an interrupted sbk-snap still removes its partial snapshot set under the lock, so
// another run can never start on the container in between.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, ROOT, type Sandbox } from '../helpers/sandbox.js';
import { fakeBtrfs } from '../helpers/fake-btrfs.js';
import { childCommands, lockTaken, until, waitForFile } from '../helpers/wait.js';

const mode = e2eMode();

describe.skipIf(mode === 'skip')('sbk-snap stopped by a signal', () => {
  let sb: Sandbox;

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'lock' });
    await makeContainer(sb, 'c1');
  }, 120_000);

  afterAll(async () => {
    await sb?.cleanup();
  });

  it('keeps the lock while it removes its partial set', async () => {
    // A btrfs whose snapshots take a while (after being made) and whose delete is slow.
    const snapped = path.join(sb.dir, 'snapped');
    const deleting = path.join(sb.dir, 'deleting');
    const bin = await fakeBtrfs(path.join(sb.dir, 'bin'), (real) => [
      `if [ "$1 $2" = "subvolume snapshot" ]; then ${real} "$@"; rc=$?; touch ${snapped}; sleep 3; exit $rc; fi`,
      `if [ "$1 $2" = "subvolume delete" ]; then touch ${deleting}; sleep 2; fi`,
    ]);
    const run = execa(path.join(ROOT, 'bin/sbk-snap'), ['c1'], {
      reject: false,
      stdin: 'ignore',
      env: { ...process.env, ...sb.env, PATH: `${bin}:${process.env.PATH}` },
    });
    await waitForFile(snapped);
    process.kill(run.pid!, 'SIGTERM');
    await waitForFile(deleting);
    // The partial set is being removed: the lock must still be taken.
    const lockFile = path.join(sb.backupDir, '.locks', 'c1.lock');
    const taken = await lockTaken(lockFile);
    const r = await run;
    expect(taken, 'the lock was free while sbk-snap was still cleaning up').toBe(true);
    expect(r.exitCode).toBe(143);
    expect(await readdir(path.join(sb.backupDir, 'c1'))).toEqual([]);
  });

  it('still stops at once while waiting for the lock', async () => {
    const lockFile = path.join(sb.backupDir, '.locks', 'c1.lock');
    await mkdir(path.dirname(lockFile), { recursive: true });
    // The holder: a pipe kept open, as sbk does it (no child left behind when it is killed).
    const holder = execa('flock', ['-F', lockFile, 'cat'], { reject: false, stdin: 'pipe' });
    try {
      await until(() => lockTaken(lockFile), 'the holder to take the lock');
      const run = execa(path.join(ROOT, 'bin/sbk-snap'), ['--wait=60', 'c1'], { reject: false, stdin: 'ignore', env: { ...process.env, ...sb.env } });
      // Waiting: its flock child blocks on the lock (-w, not the -n of a first try).
      await until(async () => (await childCommands(run.pid!)).some((c) => /^flock .*-w/.test(c)), 'sbk-snap to wait for the lock');
      expect(run.exitCode ?? null).toBeNull(); // still waiting
      process.kill(run.pid!, 'SIGTERM');
      const r = await run;
      expect(r.exitCode).toBe(143);
      // It stopped without waiting for the lock: the holder still has it.
      expect(holder.exitCode ?? null).toBeNull();
      expect(await lockTaken(lockFile)).toBe(true);
      expect(r.stderr).not.toMatch(/at .*\.m?js:\d+/);
    } finally {
      holder.stdin!.end();
      await holder;
    }
  });
});
