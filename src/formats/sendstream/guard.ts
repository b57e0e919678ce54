// The receive guard: refuses, before `btrfs receive` runs it, a send-stream command that would
// reach outside the subvolume being received.
import { Cmd, corruptAt } from './constants.js';
import type { SendCommand } from './reader.js';

/** Commands whose `btrfs receive` action opens or changes the file at PATH through a symlink. */
const FOLLOWS_PATH = new Set<number>([
  Cmd.WRITE,
  Cmd.CLONE,
  Cmd.TRUNCATE,
  Cmd.CHMOD,
  Cmd.UPDATE_EXTENT,
  Cmd.FALLOCATE,
  Cmd.FILEATTR,
  Cmd.ENCODED_WRITE,
  Cmd.ENABLE_VERITY,
]);

/** Whether path p has a '..' component (without splitting it: this runs on every command). */
const hasDotDot = (p: string) => p === '..' || p.startsWith('../') || p.endsWith('/..') || p.includes('/../');

const refusal = (c: SendCommand, why: string) => corruptAt(c.offset, `${c.name}: ${why}; refused (btrfs send never makes this)`);

/** Refuses a path that is absolute, has a NUL byte or leaves the subvolume. */
function insideSubvolume(c: SendCommand, p: string | undefined, what: string): void {
  if (p === undefined) return;
  if (p.startsWith('/')) throw refusal(c, `${what} '${p}' is absolute`);
  if (p.includes('\0')) throw refusal(c, `${what} has a NUL byte`);
  if (hasDotDot(p)) throw refusal(c, `${what} '${p}' leaves the subvolume ('..')`);
}

/**
 * Keeps `btrfs receive` inside the subvolume it makes. receive joins each command's paths to its
 * directory and lets the kernel resolve them, '..' and symlinks included (btrfs-progs does not
 * check), so a crafted archive could write anywhere as root. `btrfs send` never makes such a
 * path: no absolute path, no '..', and no path through a symlink, since its paths come from the
 * inode tree, where a symlink is a leaf; nor does it write, truncate or chmod a symlink. The
 * guard refuses a command that does any of this (a corrupt stream, exit 4) before receive gets
 * its last byte.
 *
 * It tracks the symlinks the stream makes, renames and removes. One guard follows one volume
 * through its chain (the Full, then each incremental), so it also knows the symlinks of the
 * parent an incremental is received onto; a SUBVOL command (a new, empty subvolume) starts
 * afresh.
 */
export class ReceiveGuard {
  private symlinks = new Set<string>();
  /** For each directory, how many tracked symlinks are below it: a rename of a directory
   *  scans the symlinks only when it has some (a full send renames every new file once). */
  private below = new Map<string, number>();
  private uuid: string | undefined;

  check(c: SendCommand): void {
    if (c.type === Cmd.SUBVOL || c.type === Cmd.SNAPSHOT) {
      // The subvolume's own name: one component, made in receive's directory.
      const name = c.path ?? '';
      if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0'))
        throw refusal(c, `the subvolume name '${name}' is not a plain name`);
      if (c.type === Cmd.SUBVOL) {
        this.symlinks = new Set();
        this.below = new Map();
      }
      this.uuid = c.uuid;
      return;
    }
    insideSubvolume(c, c.path, 'path');
    insideSubvolume(c, c.pathTo, 'new path');
    insideSubvolume(c, c.clonePath, 'clone source');
    if (c.type !== Cmd.SYMLINK) insideSubvolume(c, c.pathLink, 'link source'); // a symlink's target is data
    this.notThroughSymlink(c, c.path, 'path');
    this.notThroughSymlink(c, c.pathTo, 'new path');
    if (c.type === Cmd.LINK) this.notThroughSymlink(c, c.pathLink, 'link source');
    if (c.type === Cmd.CLONE && c.cloneUuid === this.uuid) this.notThroughSymlink(c, c.clonePath, 'clone source');
    if (FOLLOWS_PATH.has(c.type) && c.path !== undefined && this.symlinks.has(c.path))
      throw refusal(c, `'${c.path}' is a symlink`);

    switch (c.type) {
      case Cmd.SYMLINK:
        this.add(c.path!);
        break;
      case Cmd.LINK: // a hard link to a symlink is a symlink
        if (this.symlinks.has(c.pathLink!)) this.add(c.path!);
        break;
      case Cmd.UNLINK:
        this.remove(c.path!);
        break;
      case Cmd.RENAME: {
        const from = c.path!;
        const to = c.pathTo!;
        this.remove(to); // rename(2) replaces what was there (a directory only if empty)
        if (this.symlinks.has(from)) {
          this.remove(from);
          this.add(to);
        } else if (this.below.has(from)) {
          const moved = [...this.symlinks].filter((s) => s.startsWith(from + '/'));
          for (const s of moved) this.remove(s);
          for (const s of moved) this.add(to + s.slice(from.length));
        }
        break;
      }
    }
  }

  private notThroughSymlink(c: SendCommand, p: string | undefined, what: string): void {
    if (!p || this.symlinks.size === 0) return;
    for (let i = p.indexOf('/'); i >= 0; i = p.indexOf('/', i + 1)) {
      if (this.symlinks.has(p.slice(0, i))) throw refusal(c, `${what} '${p}' goes through the symlink '${p.slice(0, i)}'`);
    }
  }

  private add(p: string): void {
    if (this.symlinks.has(p)) return;
    this.symlinks.add(p);
    for (let i = p.indexOf('/'); i >= 0; i = p.indexOf('/', i + 1)) {
      const dir = p.slice(0, i);
      this.below.set(dir, (this.below.get(dir) ?? 0) + 1);
    }
  }

  private remove(p: string): void {
    if (!this.symlinks.delete(p)) return;
    for (let i = p.indexOf('/'); i >= 0; i = p.indexOf('/', i + 1)) {
      const dir = p.slice(0, i);
      const n = (this.below.get(dir) ?? 1) - 1;
      if (n > 0) this.below.set(dir, n);
      else this.below.delete(dir);
    }
  }
}
