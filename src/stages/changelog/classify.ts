// The changelog rules, shared by both methods: the facts about a path on either side (from the
// snapshots, or from a stream model alone) and the classification of each path as added,
// modified or deleted.
import type { Action, Change } from '../../formats/changelog-lines.js';
import { timespecNs } from '../../formats/sendstream/reader.js';
import type { StreamModel } from './model.js';
import { parentOf, type Entry, type SnapshotView } from './view.js';

/**
 * Facts about a path on both sides, from the snapshots (exact) or, without them, from the
 * stream alone (best effort: see man/sbk-changelog.1, --from-stream).
 */
export interface Facts {
  before(rel: string): Promise<Entry | null>;
  after(rel: string): Promise<Entry | null>;
  /** For a non-directory present on both sides as the same inode: did its content or mtime change? */
  contentChanged(rel: string, o: Entry, n: Entry): boolean;
  metaChanged(rel: string, o: Entry, n: Entry): boolean;
}

export class SnapshotFacts implements Facts {
  constructor(
    readonly oldView: SnapshotView,
    readonly newView: SnapshotView,
    private readonly model?: StreamModel,
  ) {}
  before(rel: string) {
    return this.oldView.get(rel);
  }
  async after(rel: string): Promise<Entry | null> {
    const e = await this.newView.get(rel);
    // An inode number can be reused after a delete and a remount: a node the stream created
    // is new whatever its number.
    const node = this.model?.byPath.get(rel);
    return e && node?.isNew ? { ...e, id: `n${node.serial}` } : e;
  }
  contentChanged(rel: string, o: Entry, n: Entry): boolean {
    if (this.model?.byPath.get(rel)?.data) return true;
    return o.st!.mtimeNs !== n.st!.mtimeNs || (n.kind !== 'dir' && o.st!.size !== n.st!.size);
  }
  metaChanged(rel: string, o: Entry, n: Entry): boolean {
    const a = o.st!;
    const b = n.st!;
    return a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid || !!this.model?.byPath.get(rel)?.xattr;
  }
}

export class StreamFacts implements Facts {
  constructor(private readonly model: StreamModel) {}
  async before(rel: string): Promise<Entry | null> {
    const n = this.model.byOrigin.get(rel);
    return n ? { kind: n.kind, id: `o${rel}` } : null;
  }
  async after(rel: string): Promise<Entry | null> {
    const n = this.model.byPath.get(rel);
    if (!n) return null;
    return { kind: n.kind, id: n.isNew ? `n${n.serial}` : `o${n.origin}` };
  }
  contentChanged(rel: string): boolean {
    const n = this.model.byPath.get(rel);
    if (!n) return false;
    if (n.data) return true;
    // Without the old snapshot the old mtime is unknown. A content change or a touch sets mtime
    // and ctime to the same instant; a later chmod, chown, link or xattr change moves ctime on.
    return !!n.times && timespecNs(n.times.mtime) === timespecNs(n.times.ctime);
  }
  metaChanged(rel: string): boolean {
    const n = this.model.byPath.get(rel);
    return !!n && (n.meta || n.xattr);
  }
}

// ---------------------------------------------------------------------------------------------
// Classification: the rules, shared by both methods

export class ChangeSet {
  private readonly map = new Map<string, Change>();
  add(action: Action, rel: string, dir: boolean) {
    this.map.set(`${action}\0${rel}`, { action, rel, dir });
  }
  has(action: Action, rel: string) {
    return this.map.has(`${action}\0${rel}`);
  }
  values(): Change[] {
    return [...this.map.values()];
  }
}

export const isDir = (e: Entry) => e.kind === 'dir';

/** Applies the rules to one path present on at least one side. */
export async function classify(rel: string, facts: Facts, out: ChangeSet, allChanges: boolean): Promise<void> {
  const [o, n] = await Promise.all([facts.before(rel), facts.after(rel)]);
  if (!o && !n) return;
  if (o && !n) return out.add('deleted', rel, isDir(o));
  if (!o && n) return out.add('added', rel, isDir(n));
  if (isDir(o!) !== isDir(n!)) {
    out.add('deleted', rel, isDir(o!));
    out.add('added', rel, isDir(n!));
    return;
  }
  if (isDir(n!)) {
    if (allChanges && facts.metaChanged(rel, o!, n!)) out.add('modified', rel, true);
    return;
  }
  if (o!.id !== n!.id || facts.contentChanged(rel, o!, n!)) return out.add('modified', rel, false);
  if (allChanges && facts.metaChanged(rel, o!, n!)) out.add('modified', rel, false);
}

/** A directory that gained or lost an entry is modified (unless it is itself added or deleted). */
export async function addParentDirs(out: ChangeSet, facts: Facts): Promise<void> {
  const parents = new Set<string>();
  for (const c of out.values()) if (c.action !== 'modified' && c.rel !== '') parents.add(parentOf(c.rel));
  for (const p of parents) {
    if (out.has('added', p) || out.has('deleted', p)) continue;
    const [o, n] = await Promise.all([facts.before(p), facts.after(p)]);
    if (o && n && isDir(o) && isDir(n)) out.add('modified', p, true);
  }
}
