// TEMPORARY tree producer for --tar and --list, until the replay engine (replay/replay.ts,
// replayChain) is merged: restores the chain with `btrfs receive` (restore.ts) as a container
// directory in the scratch dir, so it needs root and a --tmp on BTRFS. At the merge the one line
// in src/cli/unpack.ts that makes it becomes `(dir) => replayChain(inputs, dir, …)`, and this
// file goes.
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { isOnBtrfs, isSubvolume } from '../../system/btrfs.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import { Log } from '../../core/log.js';
import type { RestoreInput, RestoreProgress } from './input.js';
import { restoreChain } from './restore.js';
import type { TreeProducer } from './tree.js';

export function btrfsTreeProducer(inputs: RestoreInput[], opts: { log: Log; signal: AbortSignal; progress?: RestoreProgress }): TreeProducer {
  return async (dir) => {
    const lxcDir = path.dirname(dir);
    if (!(await isOnBtrfs(lxcDir)))
      throw new SbkError(`--tar and --list build the tree with btrfs receive (for now): --tmp must be on BTRFS (${lxcDir} is not)`, ExitCode.failure);
    // Its own "restored … as" line would name the scratch dir: warnings and errors only.
    const log = new Log(opts.log.prog, Math.min(opts.log.verbosity, 1) as 0 | 1);
    log.info = () => {};
    await restoreChain(inputs, { lxcDir, as: path.basename(dir), log, signal: opts.signal, progress: opts.progress });
    const volumes: string[] = [];
    for (const n of await readdir(dir)) if (await isSubvolume(path.join(dir, n))) volumes.push(n);
    return { volumes, overlay: new Map() };
  };
}
