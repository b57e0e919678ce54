// What a snapshot holds at a path (lstat, never following a symlink on the way), and the small
// path helpers the changelog modules share. Paths are raw bytes in latin1 strings.
import { lstat, readdir } from 'node:fs/promises';
import type { Stats, BigIntStats } from 'node:fs';

export type Kind = 'dir' | 'file' | 'symlink' | 'other' | 'unknown';

export interface Entry {
  kind: Kind;
  /** Identity: same id on both sides = the same inode (not replaced). */
  id: string;
  st?: BigIntStats;
}

export const kindOf = (s: Stats | BigIntStats): Kind =>
  s.isDirectory() ? 'dir' : s.isFile() ? 'file' : s.isSymbolicLink() ? 'symlink' : 'other';

export const bytes = (p: string) => Buffer.from(p, 'latin1');
export const join = (a: string, b: string) => (a === '' ? b : `${a}/${b}`);
export const parentOf = (rel: string) => {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
};

/**
 * lstat inside a snapshot, with every ancestor checked to be a real directory: a symlink in
 * the middle of a path must never lead out of the snapshot.
 */
export class SnapshotView {
  private readonly cache = new Map<string, Promise<Entry | null>>();
  constructor(readonly root: string | null) {}

  /** The root is an ordinary (UTF-8) path; `rel` is raw bytes. */
  private abs(rel: string): Buffer {
    const root = Buffer.from(this.root!, 'utf8');
    return rel === '' ? root : Buffer.concat([root, bytes('/' + rel)]);
  }

  get(rel: string): Promise<Entry | null> {
    let p = this.cache.get(rel);
    if (!p) {
      p = this.load(rel);
      this.cache.set(rel, p);
    }
    return p;
  }

  private async load(rel: string): Promise<Entry | null> {
    if (this.root === null) return null;
    if (rel !== '') {
      const parent = await this.get(parentOf(rel));
      if (!parent || parent.kind !== 'dir') return null;
    }
    const full = this.abs(rel);
    try {
      const st = await lstat(full, { bigint: true });
      return { kind: kindOf(st), id: `i${st.ino}`, st };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return null;
      throw err;
    }
  }

  /** Every path below `rel` (not rel itself), depth first; no symlink is followed. */
  async walk(rel: string, out: Set<string>): Promise<void> {
    if (this.root === null) return;
    const stack = [rel];
    while (stack.length) {
      const dir = stack.pop()!;
      const full = this.abs(dir);
      const ents = await readdir(full, { withFileTypes: true, encoding: 'buffer' });
      for (const e of ents) {
        const child = join(dir, (e.name as unknown as Buffer).toString('latin1'));
        out.add(child);
        if (e.isDirectory()) stack.push(child);
      }
    }
  }
}
