// sbk-unpack --to DIR --path PATH…: only the selected files and subtrees of the tree built in
// the scratch directory are put in DIR, laid out as the container directory `--to` makes
// (`DIR/<volume>/<path in the volume>`), with their parent directories made with the tree's modes,
// owners and times. They are moved (one rename each) when DIR is on the scratch directory's
// filesystem, else copied with `cp -a` (owners, modes, times, xattrs, ACLs, hard links within a
// subtree, holes). DIR is built beside its final name and appears in one rename.
import { lstat, mkdir, readdir, rename, rmdir, chown, chmod } from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { SbkError, ExitCode, describeSystemError } from '../../core/errors.js';
import type { Log } from '../../core/log.js';
import { formatRootTime } from '../../formats/archive/manifest.js';
import { fsyncDir, tempNameFor } from '../../system/atomic.js';
import { removeTree } from '../../system/btrfs.js';
import type { ContainerView, MetaOverlay } from './tree.js';
import { covers, selectedEntry } from './selection.js';

interface Source {
  volume: string;
  /** In the volume ('' for all of it). */
  rel: string;
}

/** The volume subtrees a selection covers: each selected path's, and every volume mounted under one. */
async function sourcesOf(view: ContainerView, selection: string[]): Promise<Source[]> {
  const out: Source[] = [];
  for (const at of selection) {
    const e = await selectedEntry(view, at); // fails, naming it, when it is not there
    out.push({ volume: e.volume, rel: e.rel.toString('utf8') });
    for (const m of view.mounts) if (m.mount !== at && m.mount !== '/' && covers(at, m.mount)) out.push({ volume: m.volume, rel: '' });
  }
  return out;
}

/**
 * Puts the selection of `view`'s tree into `toDir` (which must not exist, or be empty). Returns
 * the overlay entries of what was written (keys as in `toDir`: `rootfs/etc/x`), for the caller
 * to apply or report.
 */
export async function writeSelectionTo(view: ContainerView, selection: string[], toDir: string, log: Log): Promise<MetaOverlay> {
  const sources = await sourcesOf(view, selection);
  await checkTarget(toDir);
  const build = tempNameFor(toDir);
  await mkdir(build, { mode: 0o700 });
  try {
    // The parents' attributes as the tree has them, taken before a move changes their mtimes.
    const parents = new Map<string, BigIntStats>();
    for (const s of sources) {
      const parts = [s.volume, ...(s.rel === '' ? [] : s.rel.split('/'))];
      for (let i = 1; i < parts.length; i++) {
        const rel = parts.slice(0, i).join('/');
        if (!parents.has(rel)) parents.set(rel, await lstat(path.join(view.dir, rel), { bigint: true }));
      }
    }
    const top = await lstat(view.dir, { bigint: true });
    for (const rel of [...parents.keys()].sort()) await mkdir(path.join(build, rel));
    for (const s of sources) await moveOrCopy(path.join(view.dir, s.volume, s.rel), path.join(build, s.volume, s.rel));
    // Deepest first: making a directory inside another changes the outer one's mtime.
    for (const rel of [...parents.keys()].sort((a, b) => b.length - a.length)) await setAttrs(path.join(build, rel), parents.get(rel)!);
    await setAttrs(build, top);
    await chmod(build, 0o700); // until it is complete; its mode is set when in place
    await installDir(build, toDir);
    await chmod(toDir, Number(top.mode & 0o7777n));
    log.info(`wrote ${selection.join(', ')} to ${toDir}`);
  } catch (err) {
    await removeTree(build).catch(() => log.error(`could not remove ${build}: remove it by hand`));
    throw err;
  }
  const overlay: MetaOverlay = new Map();
  for (const [k, v] of view.overlay) if (sources.some((s) => k === s.volume || covers(`/${s.volume}${s.rel ? '/' + s.rel : ''}`, `/${k}`))) overlay.set(k, v);
  return overlay;
}

async function checkTarget(toDir: string): Promise<void> {
  const st = await lstat(toDir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return undefined;
    throw describeSystemError(err, toDir) ?? err;
  });
  if (st && (!st.isDirectory() || (await readdir(toDir)).length > 0))
    throw new SbkError(`${toDir} exists and is not an empty directory: give a new one`, ExitCode.conflict);
  try {
    if (!(await lstat(path.dirname(toDir))).isDirectory()) throw new Error('not a directory');
  } catch {
    throw new SbkError(`${path.dirname(toDir)}: no such directory`, ExitCode.notFound);
  }
}

/** One rename; across filesystems a `cp -a` that keeps holes. */
async function moveOrCopy(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
    const r = await execa('cp', ['-a', '--sparse=auto', '--', from, to], { stdin: 'ignore', reject: false });
    if (r.exitCode !== 0) throw new SbkError(`cp -a ${from} ${to} failed: ${r.stderr.trim().split('\n').slice(-2).join('; ')}`, ExitCode.failure);
  }
}

/** A directory's owner (as root), mode and times to the nanosecond, as `st` says. */
async function setAttrs(to: string, st: BigIntStats): Promise<void> {
  if (process.getuid?.() === 0) await chown(to, Number(st.uid), Number(st.gid));
  await chmod(to, Number(st.mode & 0o7777n));
  for (const [flag, t] of [['-a', st.atimeNs], ['-m', st.mtimeNs]] as const)
    await execa('touch', ['-h', flag, '-d', `@${formatRootTime(t)}`, '--', to], { stdin: 'ignore' });
}

/** `build` becomes `toDir` in one rename (an empty `toDir` is replaced), synced. */
async function installDir(build: string, toDir: string): Promise<void> {
  const mtime = await lstat(build, { bigint: true });
  await rmdir(toDir).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  try {
    await rename(build, toDir);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTEMPTY' || code === 'EEXIST') throw new SbkError(`${toDir} appeared meanwhile: not replacing it`, ExitCode.conflict);
    throw err;
  }
  await execa('touch', ['-h', '-m', '-d', `@${formatRootTime(mtime.mtimeNs)}`, '--', toDir], { stdin: 'ignore' });
  await fsyncDir(path.dirname(toDir));
}
