// The container's lock is held until a run has cleaned up, even when the run is stopped by a
// signal: an interrupted sbk-snap still removes its partial snapshot set under the lock, so
// another run can never start on the container in between.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { chmod, mkdir, readdir, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, ROOT, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(file: string, ms = 20_000): Promise<void> {
  for (const t0 = Date.now(); !existsSync(file); await sleep(50))
    if (Date.now() - t0 > ms) throw new Error(`${file} did not appear`);
}

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
    const real = (await execa('bash', ['-c', 'command -v btrfs'])).stdout.trim();
    const bin = path.join(sb.dir, 'bin');
    await mkdir(bin);
    const snapped = path.join(sb.dir, 'snapped');
    const deleting = path.join(sb.dir, 'deleting');
    await writeFile(
      path.join(bin, 'btrfs'),
      [
        '#!/bin/bash',
        `if [ "$1 $2" = "subvolume snapshot" ]; then ${real} "$@"; rc=$?; touch ${snapped}; sleep 3; exit $rc; fi`,
        `if [ "$1 $2" = "subvolume delete" ]; then touch ${deleting}; sleep 2; fi`,
        `exec ${real} "$@"`,
      ].join('\n') + '\n',
    );
    await chmod(path.join(bin, 'btrfs'), 0o755);
    const run = execa(path.join(ROOT, 'bin/sbk-snap'), ['c1'], {
      reject: false,
      stdin: 'ignore',
      env: { ...process.env, ...sb.env, PATH: `${bin}:${process.env.PATH}` },
    });
    await waitFor(snapped);
    process.kill(run.pid!, 'SIGTERM');
    await waitFor(deleting);
    // The partial set is being removed: the lock must still be taken.
    const lockFile = path.join(sb.backupDir, '.locks', 'c1.lock');
    const probe = await execa('flock', ['-n', '-E', '99', lockFile, 'true'], { reject: false });
    const r = await run;
    expect(probe.exitCode, 'the lock was free while sbk-snap was still cleaning up').toBe(99);
    expect(r.exitCode).toBe(143);
    expect(await readdir(path.join(sb.backupDir, 'c1'))).toEqual([]);
  });

  it('still stops at once while waiting for the lock', async () => {
    const lockFile = path.join(sb.backupDir, '.locks', 'c1.lock');
    await mkdir(path.dirname(lockFile), { recursive: true });
    // The holder: a pipe kept open, as sbk does it (no child left behind when it is killed).
    const holder = execa('flock', ['-F', lockFile, 'cat'], { reject: false, stdin: 'pipe' });
    try {
      await sleep(300);
      const run = execa(path.join(ROOT, 'bin/sbk-snap'), ['--wait=60', 'c1'], { reject: false, stdin: 'ignore', env: { ...process.env, ...sb.env } });
      await sleep(700);
      expect(run.exitCode ?? null).toBeNull(); // still waiting
      const t0 = Date.now();
      process.kill(run.pid!, 'SIGTERM');
      const r = await run;
      expect(r.exitCode).toBe(143);
      expect(Date.now() - t0).toBeLessThan(3000);
      expect(r.stderr).not.toMatch(/at .*\.m?js:\d+/);
    } finally {
      holder.stdin!.end();
      await holder;
    }
  });
});
