// The semantic check of a chain of send streams (sbk-unpack --verify): a model of one volume's
// tree, names only (no data, no metadata), that each stream is applied to in chain order. An
// incremental must apply to the tree its parent leaves: every path it renames, links, removes,
// writes, clones or changes exists there, every path it makes does not. A clone from the parent
// reads the parent's tree as it was before this stream changed anything (the directories a
// stream changes keep their children as the parent had them). Memory: one node per file and
// directory of the volume, about 150 bytes each with its name.
import { Cmd, corruptAt } from './constants.js';
import type { SendCommand } from './reader.js';

interface TreeNode {
  /** A directory's entries. */
  children?: Map<string, TreeNode>;
  /** The stream (its serial) that made it. */
  born: number;
}

/** Commands on an existing file at PATH (its data or metadata). */
const ON_EXISTING = new Set<number>([
  Cmd.WRITE,
  Cmd.CLONE,
  Cmd.TRUNCATE,
  Cmd.CHMOD,
  Cmd.CHOWN,
  Cmd.UTIMES,
  Cmd.SET_XATTR,
  Cmd.REMOVE_XATTR,
  Cmd.UPDATE_EXTENT,
  Cmd.FALLOCATE,
  Cmd.FILEATTR,
  Cmd.ENCODED_WRITE,
  Cmd.ENABLE_VERITY,
]);

const MAKES = new Set<number>([Cmd.MKFILE, Cmd.MKDIR, Cmd.MKNOD, Cmd.MKFIFO, Cmd.MKSOCK, Cmd.SYMLINK]);

/**
 * One volume's tree through its chain. A SUBVOL command (a Full) starts it afresh; a SNAPSHOT
 * command (an incremental) continues it when its parent is the stream applied before, and
 * otherwise (an incremental checked without its parent) checks nothing until the next Full.
 */
export class TreeModel {
  private root: TreeNode | undefined;
  private serial = 0;
  private uuid: string | undefined;
  private parentUuid: string | undefined;
  /** The directories the current stream changed: their entries as the parent's tree had them. */
  private before = new Map<TreeNode, Map<string, TreeNode>>();
  private cmd!: SendCommand;

  check(c: SendCommand): void {
    this.cmd = c;
    if (c.type === Cmd.SUBVOL || c.type === Cmd.SNAPSHOT) {
      const continues = c.type === Cmd.SNAPSHOT && this.root !== undefined && c.cloneUuid !== undefined && c.cloneUuid === this.uuid;
      this.serial++;
      if (c.type === Cmd.SUBVOL) this.root = { children: new Map(), born: this.serial };
      else if (!continues) this.root = undefined;
      this.before = new Map();
      this.parentUuid = c.type === Cmd.SNAPSHOT ? c.cloneUuid : undefined;
      this.uuid = c.uuid;
      return;
    }
    if (!this.root || c.type === Cmd.END) return;
    if (MAKES.has(c.type)) return this.put(c.path!, { born: this.serial, ...(c.type === Cmd.MKDIR ? { children: new Map() } : {}) }, false);
    switch (c.type) {
      case Cmd.RENAME: {
        const node = this.take(c.path!);
        this.put(c.pathTo!, node, true);
        return;
      }
      case Cmd.LINK: {
        const target = this.existing(c.pathLink!, 'link source');
        if (target.children) throw this.misfit(`the link source '${c.pathLink}' is a directory`);
        return this.put(c.path!, target, false);
      }
      case Cmd.UNLINK:
      case Cmd.RMDIR: {
        const node = this.existing(c.path!, 'path');
        if ((c.type === Cmd.RMDIR) !== (node.children !== undefined))
          throw this.misfit(`'${c.path}' is ${node.children ? 'a directory' : 'not a directory'}`);
        if (node.children?.size) throw this.misfit(`the directory '${c.path}' is not empty`);
        this.take(c.path!);
        return;
      }
    }
    if (ON_EXISTING.has(c.type)) this.existing(c.path!, 'path');
    if (c.type === Cmd.CLONE && c.clonePath !== undefined) {
      // From this subvolume as it is now, or from the parent as it was; another source (send -c)
      // is not modelled.
      if (c.cloneUuid === this.uuid) this.existing(c.clonePath, 'clone source');
      else if (c.cloneUuid === this.parentUuid && !this.lookup(c.clonePath, true))
        throw this.misfit(`the clone source '${c.clonePath}' does not exist in the parent`);
    }
  }

  private misfit(why: string): Error {
    return corruptAt(this.cmd.offset, `${this.cmd.name} does not apply to the tree its parent leaves: ${why}`);
  }

  /** The node at `p` ('' is the root) now, or in the parent's tree (`parent`). */
  private lookup(p: string, parent = false): TreeNode | undefined {
    let n: TreeNode | undefined = this.root!;
    if (p === '') return n;
    for (const name of p.split('/')) {
      const entries: Map<string, TreeNode> | undefined = parent ? (this.before.get(n!) ?? n!.children) : n!.children;
      n = entries?.get(name);
      if (!n || (parent && n.born === this.serial)) return undefined;
    }
    return n;
  }

  private existing(p: string, what: string): TreeNode {
    const n = this.lookup(p);
    if (!n) throw this.misfit(`the ${what} '${p}' does not exist`);
    return n;
  }

  /** The directory holding `p`, and the name in it. */
  private parentOf(p: string): [Map<string, TreeNode>, string] {
    const slash = p.lastIndexOf('/');
    const dirPath = slash < 0 ? '' : p.slice(0, slash);
    const dir = this.lookup(dirPath);
    if (!dir?.children) throw this.misfit(`the directory of '${p}' does not exist`);
    // Keep the entries as the parent had them, for clones from the parent.
    if (dir.born < this.serial && !this.before.has(dir)) this.before.set(dir, new Map(dir.children));
    return [dir.children, p.slice(slash + 1)];
  }

  private put(p: string, node: TreeNode, replace: boolean): void {
    const [entries, name] = this.parentOf(p);
    const there = entries.get(name);
    if (there && !(replace && !there.children?.size)) throw this.misfit(`'${p}' exists already`);
    entries.set(name, node);
  }

  private take(p: string): TreeNode {
    const [entries, name] = this.parentOf(p);
    const node = entries.get(name);
    if (!node) throw this.misfit(`'${p}' does not exist`);
    entries.delete(name);
    return node;
  }
}
