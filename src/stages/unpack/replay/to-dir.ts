// sbk-unpack --to DIR: the chain replayed into a new directory on any filesystem. The tree is
// built beside DIR (a temporary name in the same parent directory) and appears in one rename;
// on failure or signal the temporary directory goes and nothing is left (what a killed run left
// is removed by the next run into the same DIR).
import { mkdir, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { fsyncDir } from '../../../system/atomic.js';
import { isProcessAlive } from '../../../system/proc.js';
import { SbkError, ExitCode, describeSystemError } from '../../../core/errors.js';
import type { RestoreInput } from '../input.js';
import { replayChain, describeOverlay, type ReplayOptions, type ReplayResult } from './replay.js';

/** The temporary name DIR is built under. */
export const toDirTempName = (dir: string, pid = process.pid) => path.join(path.dirname(dir), `.sbk-to-${path.basename(dir)}-${pid}`);

/** Replays the chain into `dir`, which must not exist or be empty. */
export async function replayToDir(inputs: RestoreInput[], dir: string, opts: ReplayOptions): Promise<ReplayResult> {
  const target = path.resolve(dir);
  await checkTarget(target);
  const tmp = toDirTempName(target);
  await sweepDead(target, opts);
  try {
    await mkdir(tmp, { mode: 0o700 });
  } catch (err) {
    throw describeSystemError(err, `cannot make ${tmp}`) ?? err;
  }
  let result: ReplayResult;
  try {
    result = await replayChain(inputs, tmp, opts);
    opts.signal.throwIfAborted();
    await checkTarget(target);
    // rename(2) replaces an empty directory.
    await rename(tmp, target);
  } catch (err) {
    await rm(tmp, { recursive: true, force: true }).catch(() => opts.log.error(`could not remove ${tmp}; remove it by hand`));
    throw err;
  }
  await fsyncDir(path.dirname(target));
  const lost = describeOverlay(result.overlay);
  if (lost) opts.log.warn(`not root: ${target} lacks ${lost}; run as root to restore them`);
  opts.log.info(`replayed ${result.last.name} into ${target} (${result.volumes.join(', ')})`);
  return result;
}

/** What runs into the same DIR left when they were killed (their process is gone) is removed. */
async function sweepDead(target: string, opts: ReplayOptions): Promise<void> {
  const prefix = path.basename(toDirTempName(target, 0)).slice(0, -1);
  for (const n of await readdir(path.dirname(target)).catch(() => [] as string[])) {
    if (!n.startsWith(prefix) || !/^\d+$/.test(n.slice(prefix.length)) || isProcessAlive(Number(n.slice(prefix.length)))) continue;
    opts.log.info(`removing ${path.join(path.dirname(target), n)}, left by a replay that did not finish`);
    await rm(path.join(path.dirname(target), n), { recursive: true, force: true });
  }
}

async function checkTarget(target: string): Promise<void> {
  let st;
  try {
    st = await stat(target);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      try {
        if ((await stat(path.dirname(target))).isDirectory()) return;
      } catch {
        // said below
      }
      throw new SbkError(`--to ${target}: its parent directory does not exist`, ExitCode.notFound);
    }
    throw describeSystemError(err, `--to ${target}`) ?? err;
  }
  if (!st.isDirectory()) throw new SbkError(`--to ${target}: exists and is not a directory`, ExitCode.conflict);
  if ((await readdir(target)).length) throw new SbkError(`--to ${target}: exists and is not empty`, ExitCode.conflict);
}
