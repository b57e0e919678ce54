// sbk-unpack --tar, --list, and --to DIR with --path: the tree of the restored point is built in a scratch directory
// (--tmp, default $TMPDIR) by a tree producer (the replay of the chain), then written as a pax
// tar (tar-out.ts) or listed (list.ts), all of it or the --path selection (selection.ts), or the
// selection put in DIR (selection-to.ts). The
// scratch directory is removed on every way out (success, failure, signal).
import { chmod, lstat, mkdtemp, readdir, statfs } from 'node:fs/promises';
import path from 'node:path';
import type { Writable } from 'node:stream';
import { SbkError, ExitCode, describeSystemError } from '../../core/errors.js';
import { UNPACK_SCRATCH_PREFIX } from '../../core/layout.js';
import type { Log } from '../../core/log.js';
import { formatBytes } from '../../core/progress.js';
import { removeTree } from '../../system/btrfs.js';
import { ContainerView, containerMounts, type MetaOverlay, type TreeProducer } from './tree.js';
import { writeSelectionTo } from './selection-to.js';
import { normalizeSelection, walkSelection } from './selection.js';
import { TarOut } from './tar-out.js';
import { writeList } from './list.js';

export interface FromTreeOptions {
  mode: 'tar' | 'list' | 'to';
  /** With mode 'to': the directory the selection goes to. */
  to?: string;
  /** --list as NDJSON. */
  json?: boolean;
  /** --path: container paths; all of the tree without. */
  paths?: string[];
  /** Where the scratch directory is made. */
  tmp: string;
  /** The archives' total size, when known (files): said up front with the space needed. */
  archiveBytes?: number;
  /** Where --tar and --list write (unused with mode 'to'). */
  out?: Writable;
  log: Log;
  signal: AbortSignal;
}

/**
 * Builds the tree with `produce` in a scratch directory and writes it (or its listing) to `out`;
 * with mode 'to', puts the --path selection in `to` and returns the overlay entries of what it
 * wrote (what the tree on disk could not hold), else an empty map.
 */
export async function unpackFromTree(produce: TreeProducer, opts: FromTreeOptions): Promise<MetaOverlay> {
  const { log, signal } = opts;
  const selection = normalizeSelection(opts.paths);
  if (opts.mode === 'to' && (!selection || !opts.to)) throw new Error('mode to needs a selection and a target');
  const scratch = await makeScratch(opts.tmp);
  try {
    await sayScratch(scratch, opts);
    const dir = path.join(scratch, 'tree');
    const result = await produce(dir);
    signal.throwIfAborted();
    const view = new ContainerView(dir, await containerMounts(dir, result.volumes, log), result.overlay);
    if (opts.mode === 'to') return await writeSelectionTo(view, selection!, opts.to!, log);
    const entries = walkSelection(view, selection, log);
    if (opts.mode === 'list') {
      const n = await writeList(entries, opts.out!, opts.json ?? false);
      log.verbose(`listed ${n} files`);
      return new Map();
    }
    const tar = new TarOut(opts.out!, view, { log, signal });
    await tar.begin();
    for await (const e of entries) await tar.add(e);
    await tar.end();
    log.verbose(`wrote ${tar.members} members`);
    return new Map();
  } finally {
    await removeScratch(scratch, log);
  }
}

async function makeScratch(tmp: string): Promise<string> {
  try {
    return await mkdtemp(path.join(tmp, UNPACK_SCRATCH_PREFIX));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') throw new SbkError(`--tmp ${tmp}: no such directory`, ExitCode.notFound);
    throw describeSystemError(err, `--tmp ${tmp}`) ?? err;
  }
}

/** The space the scratch tree takes, said before it is built. */
async function sayScratch(scratch: string, opts: FromTreeOptions): Promise<void> {
  const fs = await statfs(scratch);
  const free = Number(fs.bavail) * Number(fs.bsize);
  const held = opts.archiveBytes ? ` (the archives hold ${formatBytes(opts.archiveBytes)} compressed)` : '';
  opts.log.info(`building the tree of that point in ${scratch}: it takes the size of the container there${held}; ${formatBytes(free)} free; removed when done`);
  if (opts.archiveBytes && free < opts.archiveBytes)
    opts.log.warn(`${path.dirname(scratch)} has less free space than the archives' compressed size: the tree will likely not fit (choose another with --tmp DIR)`);
}

/**
 * Removes the scratch directory. A tree built without root may hold directories without write
 * permission for their owner: those are opened up first.
 */
async function removeScratch(scratch: string, log: Log): Promise<void> {
  try {
    await removeTree(scratch);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    try {
      if (code !== 'EACCES' && code !== 'EPERM') throw err;
      await openUp(Buffer.from(scratch));
      await removeTree(scratch);
    } catch (err2) {
      log.error(`could not remove the scratch directory ${scratch}: ${(err2 as Error).message}; remove it by hand`);
    }
  }
}

async function openUp(dir: Buffer): Promise<void> {
  await chmod(dir, 0o700);
  for (const n of (await readdir(dir, { encoding: 'buffer' })) as Buffer[]) {
    const p = Buffer.concat([dir, Buffer.from('/'), n]);
    if ((await lstat(p)).isDirectory()) await openUp(p);
  }
}
