// `--path PATH` of sbk-unpack: which files of the container's tree are written or listed. Paths
// are container paths (`/etc/nginx`, `/home/ubuntu/notes.txt`); each selects that file or the
// whole subtree under it. One that does not exist at the restored point is an error naming it.
import { lstat } from 'node:fs/promises';
import path from 'node:path';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { Log } from '../../core/log.js';
import type { ContainerView, TreeEntry } from './tree.js';

/**
 * The selection in canonical form: absolute, normalized, no trailing slash, sorted, and without
 * paths another one already covers (`/etc/nginx` under `/etc`). Undefined selects everything.
 */
export function normalizeSelection(paths: readonly string[] | undefined): string[] | undefined {
  if (!paths || paths.length === 0) return undefined;
  const norm = paths.map((p) => {
    if (p === '' || p.includes('\0')) throw new SbkError(`--path ${JSON.stringify(p)}: not a path`, ExitCode.usage);
    return path.posix.normalize('/' + p).replace(/(.)\/+$/, '$1');
  });
  norm.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const kept: string[] = [];
  for (const p of norm) if (!kept.some((q) => covers(q, p))) kept.push(p);
  return kept;
}

/** Whether the subtree at container path `q` holds `p`. */
export function covers(q: string, p: string): boolean {
  return q === '/' || p === q || p.startsWith(q + '/');
}

/**
 * The entry at a selected container path. Every directory on the way must be one in the tree
 * (a symlink is not followed: it may point anywhere in the container, or out of it).
 */
export async function selectedEntry(view: ContainerView, at: string): Promise<TreeEntry> {
  const { mount, rel } = view.locate(at);
  const volumeRoot = path.join(view.dir, mount.volume);
  const parts = rel === '' ? [] : rel.split('/');
  for (let i = 0; i < parts.length; i++) {
    const here = parts.slice(0, i + 1).join('/');
    const st = await lstat(path.join(volumeRoot, here)).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return undefined;
      throw err;
    });
    const shown = path.posix.join(mount.mount, here);
    if (!st) throw new SbkError(`--path ${at}: no such file or directory at this point${shown !== at ? ` (${shown} does not exist)` : ''}`, ExitCode.notFound);
    if (i < parts.length - 1 && !st.isDirectory())
      throw new SbkError(
        `--path ${at}: no such file or directory at this point (${shown} is ${st.isSymbolicLink() ? 'a symbolic link: give the path it points to' : 'not a directory'})`,
        ExitCode.notFound,
      );
  }
  return view.entry(Buffer.from(at, 'utf8'), mount.volume, Buffer.from(rel, 'utf8'));
}

/**
 * Every entry of the selection (all of the tree without one), depth-first. Selected paths are
 * all looked up first, so a wrong one fails before anything is written. A volume whose mount
 * point has no parent directory in the tree is walked at the end, with a warning.
 */
export async function* walkSelection(view: ContainerView, selection: string[] | undefined, log: Log): AsyncGenerator<TreeEntry> {
  const wanted = selection ?? ['/'];
  const roots: TreeEntry[] = [];
  for (const at of wanted) roots.push(await selectedEntry(view, at));
  const visited = new Set<string>(['/']);
  for (const r of roots) {
    const at = r.path.toString('utf8');
    if (view.mounts.some((m) => m.mount === at)) visited.add(at);
    yield* view.walk(r, visited);
  }
  for (const m of view.mounts) {
    if (visited.has(m.mount) || !wanted.some((q) => covers(q, m.mount))) continue;
    log.warn(`volume ${m.volume} is mounted at ${m.mount}, whose parent directory is not in the tree: listed on its own`);
    visited.add(m.mount);
    yield* view.walk(await view.root(m), visited);
  }
}
