// The lock-busy message names the run that holds the lock now, never a finished one whose
// record is still in the lock file (a new holder writes its record only after it has the lock,
// so a run that fails in between reads its predecessor's).
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { acquireLock, type Lock } from '../../src/system/lock.js';
import { ExitCode, SbkError } from '../../src/core/errors.js';

/** The pid of a process that has exited. */
async function deadPid(): Promise<number> {
  const p = execa('true');
  await p;
  return p.pid!;
}

async function lockError(file: string): Promise<SbkError> {
  const err = await acquireLock(file, { holder: 'sbk-snap c1 (second)' }).then(
    (l) => {
      void l.release();
      throw new Error('the lock was taken twice');
    },
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SbkError);
  expect((err as SbkError).exitCode).toBe(ExitCode.locked);
  return err as SbkError;
}

describe('lock holder in the busy message', () => {
  let dir = '';
  let file = '';
  const held: Lock[] = [];
  const children: ResultPromise[] = [];
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'sbk-lock-'));
    file = path.join(dir, 'c1.lock');
  });
  afterEach(async () => {
    for (const l of held.splice(0)) await l.release();
    for (const c of children.splice(0)) {
      c.kill();
      await c.catch(() => {});
    }
    await rm(dir, { recursive: true, force: true });
  });

  it('names the holder that is running', async () => {
    held.push(await acquireLock(file, { holder: 'sbk-pack --store' }));
    const err = await lockError(file);
    expect(err.message).toContain(`is locked by sbk-pack --store (pid ${process.pid}`);
  });

  it('does not name a finished holder whose record is still in the lock file', async () => {
    held.push(await acquireLock(file, { holder: 'sbk-pack --store' }));
    // As the file reads while a new holder has taken the lock but not yet written its record.
    const dead = await deadPid();
    await writeFile(file, `sbk-snap --confirm c1_1 (pid ${dead}, since 2026-01-01T00:00:00.000Z)\n`);
    const err = await lockError(file);
    expect(err.message).not.toContain('--confirm');
    expect(err.message).not.toContain(`pid ${dead}`);
    expect(err.message).toContain(`sbk-pack --store (pid ${process.pid}`);
  });

  it('names the pid of another program holding the lock, not a dead recorded one', async () => {
    const dead = await deadPid();
    await writeFile(file, `sbk-snap c1 (pid ${dead}, since 2026-01-01T00:00:00.000Z)\n`);
    const holder = execa('flock', ['-x', '-F', file, 'sh', '-c', 'echo locked; exec sleep 600'], { buffer: false });
    children.push(holder);
    await new Promise<void>((resolve, reject) => {
      holder.stdout!.once('data', () => resolve());
      holder.catch(reject);
    });
    const err = await lockError(file);
    expect(err.message).not.toContain(`pid ${dead}`);
    expect(err.message).toMatch(/is locked by pid \d+ \(.*sleep 600\)/);
  });
});
