// The changelog of a backup: which paths were added, modified or deleted between two snapshots
// of a volume (man/sbk-changelog.1 states the rules; man/sbk.7, CHANGELOG, the format).
//
// Two methods give the same lines:
//  - stream (default): a metadata-only send stream (`btrfs send --no-data -p OLD NEW`) is
//    replayed on a lazy model of the old tree (model.ts), which yields the few paths that can
//    differ; those are then compared with lstat in both snapshots (classify.ts). Cost grows with
//    the change.
//  - rsync (rsync.ts): `rsync -n -a --delete -i NEW/ OLD/`, each itemized line mapped to the
//    same rules.
// The lines themselves (escaping, order, parsing) are src/formats/changelog-lines.ts.
import { readdir } from 'node:fs/promises';
import type { Change } from '../../formats/changelog-lines.js';
import { inodeResolve, send } from '../../system/btrfs.js';
import { ChangeSet, SnapshotFacts, StreamFacts, addParentDirs, classify, type Facts } from './classify.js';
import { modelFromStream, type Node, type StreamModel } from './model.js';
import { changesByRsync } from './rsync.js';
import { SnapshotView, bytes, join } from './view.js';

// bench/changelog.mjs times each method by its own entry point.
export { changesByRsync };

export type Method = 'stream' | 'rsync';

export interface ChangelogOptions {
  /** Also list permission, owner, group and xattr (ACL) changes, as `modified`. */
  allChanges?: boolean;
  signal?: AbortSignal;
  /** Warnings (e.g. what a stream alone cannot tell). */
  warn?: (msg: string) => void;
}

// ---------------------------------------------------------------------------------------------
// Method 1: send stream


/**
 * Changes described by a stream model. With the snapshots the result is exact; without them
 * (`--from-stream`) the stream alone decides, with the limits documented in the man page.
 */
export async function changesFromModel(
  model: StreamModel,
  snapshots: { oldRoot: string | null; newRoot: string } | undefined,
  opts: ChangelogOptions = {},
): Promise<Change[]> {
  const oldCand = new Set<string>();
  const newCand = new Set<string>();
  for (const [origin, n] of model.byOrigin) if (n.touched) oldCand.add(origin);
  for (const [p, n] of model.byPath) if (n.touched) newCand.add(p);

  let facts: Facts;
  if (snapshots) {
    const oldView = new SnapshotView(model.incremental ? snapshots.oldRoot : null);
    const newView = new SnapshotView(snapshots.newRoot);
    facts = new SnapshotFacts(oldView, newView, model);
    // A moved directory carries its contents along unnamed by the stream: list them from the
    // snapshots, under the old path and under the new one.
    const finals = new Map<Node, string[]>();
    for (const [p, n] of model.byPath) if (n.renamed && !n.isNew) finals.set(n, [...(finals.get(n) ?? []), p]);
    for (const [origin, n] of model.byOrigin) {
      if (!n.renamed) continue;
      if ((await oldView.get(origin))?.kind === 'dir') await oldView.walk(origin, oldCand);
      for (const p of finals.get(n) ?? []) if ((await newView.get(p))?.kind === 'dir') await newView.walk(p, newCand);
    }
  } else {
    facts = new StreamFacts(model);
    const moved = [...model.byOrigin.values()].filter((n) => n.renamed && (n.kind === 'dir' || n.kind === 'unknown'));
    if (moved.length)
      opts.warn?.(
        `${moved.length} renamed path(s) may be directories: without the snapshots (--between), ` +
          `their contents are not listed and a directory may lack its trailing '/'`,
      );
  }

  const out = new ChangeSet();
  const all = new Set([...oldCand, ...newCand]);
  for (const rel of all) await classify(rel, facts, out, !!opts.allChanges);
  if (snapshots && facts instanceof SnapshotFacts) {
    // The stream names a changed file by one of its names; its other hard links changed too
    // (rsync, comparing path by path, lists them all). Their names come from the inode's
    // back references, which costs one look-up per changed multi-link file.
    for (const c of out.values()) {
      if (c.action !== 'modified' || c.dir) continue;
      const n = await facts.after(c.rel);
      if (!n?.st || n.st.nlink < 2n) continue;
      for (const rel of await otherLinks(snapshots.newRoot, n.st.ino, opts.signal)) {
        if (!all.has(rel)) await classify(rel, facts, out, !!opts.allChanges);
      }
    }
  }
  await addParentDirs(out, facts);
  return out.values();
}

/** Every name of inode `ino` in the subvolume at `root` (`btrfs inspect-internal inode-resolve`). */
async function otherLinks(root: string, ino: bigint, signal?: AbortSignal): Promise<string[]> {
  const out = await inodeResolve(root, ino, signal);
  if (!out) return [];
  // One path per line, prefixed with `root/`. A name holding a newline cannot be told apart
  // here; such a line does not resolve and is dropped (classify checks every path by lstat).
  const prefix = Buffer.from(root.replace(/\/+$/, '') + '/', 'utf8').toString('latin1');
  return out
    .toString('latin1')
    .split('\n')
    .filter((l) => l.startsWith(prefix))
    .map((l) => l.slice(prefix.length));
}

/** `btrfs send --no-data [-p OLD] NEW`, parsed; OLD null lists the whole of NEW as added. */
export async function changesByStream(oldSnap: string | null, newSnap: string, opts: ChangelogOptions = {}): Promise<Change[]> {
  const { stdout, done } = send(newSnap, { parent: oldSnap ?? undefined, noData: true, signal: opts.signal });
  let model: StreamModel;
  try {
    model = await modelFromStream(stdout);
  } catch (err) {
    // If btrfs itself failed, its message is the one that explains the short stream.
    stdout.resume();
    const sendErr = await done.then(
      () => undefined,
      (e: unknown) => e,
    );
    throw sendErr ?? err;
  }
  await done;
  return changesFromModel(model, { oldRoot: oldSnap, newRoot: newSnap }, opts);
}

/**
 * Every path of a snapshot as added (a first Full, a new volume), the root too: a readdir walk
 * that follows no symlink. Both methods would list the same paths, but on 50,000 files a whole
 * `btrfs send --no-data`, replayed and lstat'ed path by path, took 8–12 s and rsync about 1 s,
 * the walk 0.02–0.4 s (bench/changelog.mjs, idle and loaded 2-core box).
 */
async function changesAllAdded(root: string, opts: ChangelogOptions = {}): Promise<Change[]> {
  const out: Change[] = [{ action: 'added', rel: '', dir: true }];
  const rootBytes = Buffer.from(root, 'utf8');
  const stack = [''];
  while (stack.length) {
    opts.signal?.throwIfAborted();
    const dir = stack.pop()!;
    const full = dir === '' ? rootBytes : Buffer.concat([rootBytes, bytes('/' + dir)]);
    for (const e of await readdir(full, { withFileTypes: true, encoding: 'buffer' })) {
      const rel = join(dir, (e.name as unknown as Buffer).toString('latin1'));
      const isDir = e.isDirectory();
      out.push({ action: 'added', rel, dir: isDir });
      if (isDir) stack.push(rel);
    }
  }
  return out;
}

/** The changes between two snapshots of a volume by either method; `oldSnap` null: all added. */
export function changesBetween(method: Method, oldSnap: string | null, newSnap: string, opts: ChangelogOptions = {}): Promise<Change[]> {
  if (oldSnap === null) return changesAllAdded(newSnap, opts);
  return method === 'rsync' ? changesByRsync(oldSnap, newSnap, opts) : changesByStream(oldSnap, newSnap, opts);
}
