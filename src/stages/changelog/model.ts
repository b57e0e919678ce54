// Replaying a send stream on a lazy model of the old tree: which nodes the stream created,
// renamed, removed or changed, by their old path and by their new one.
import { SbkError, ExitCode } from '../../core/errors.js';
import { escapePath } from '../../formats/changelog-lines.js';
import { Cmd } from '../../formats/sendstream/constants.js';
import { readSendStream, type SendCommand, type Timespec } from '../../formats/sendstream/reader.js';
import { join, type Kind } from './view.js';

/**
 * A node of the model. A node with an `origin` existed in the old tree at that path; its
 * children not yet mentioned by the stream are, implicitly, the old tree's. A node without
 * origin was created by the stream.
 */
export class Node {
  children?: Map<string, Node | null>; // null: the name was removed
  touched = false;
  renamed = false;
  data = false;
  meta = false;
  xattr = false;
  times?: { mtime: Timespec; ctime: Timespec };
  constructor(
    readonly serial: number,
    readonly origin: string | null,
    public kind: Kind,
  ) {
    if (kind === 'dir') this.children = new Map();
  }
  get isNew() {
    return this.origin === null;
  }
  asDir(): Map<string, Node | null> {
    if (this.kind === 'unknown') this.kind = 'dir';
    return (this.children ??= new Map());
  }
}

/** What a send stream says changed, in terms of the old and new trees' paths. */
export class StreamModel {
  private serial = 0;
  private root: Node | undefined;
  /** Nodes of the old tree the stream mentioned, by their old path. */
  readonly byOrigin = new Map<string, Node>();
  /** Set by `finish`: every reachable node by its path in the new tree. */
  readonly byPath = new Map<string, Node>();
  incremental = false;
  private cmd?: SendCommand;

  apply(c: SendCommand): void {
    this.cmd = c;
    switch (c.type) {
      case Cmd.SUBVOL:
      case Cmd.SNAPSHOT:
        if (this.root) throw this.inconsistent('a second subvol/snapshot command');
        this.incremental = c.type === Cmd.SNAPSHOT;
        this.root = new Node(this.serial++, this.incremental ? '' : null, 'dir');
        if (this.incremental) this.byOrigin.set('', this.root);
        this.root.touched = !this.incremental;
        return;
      case Cmd.END:
        return;
    }
    if (!this.root) throw this.inconsistent('a command before subvol/snapshot');
    switch (c.type) {
      case Cmd.MKFILE:
        return this.create(c.path!, 'file');
      case Cmd.MKDIR:
        return this.create(c.path!, 'dir');
      case Cmd.SYMLINK:
        return this.create(c.path!, 'symlink');
      case Cmd.MKNOD:
      case Cmd.MKFIFO:
      case Cmd.MKSOCK:
        return this.create(c.path!, 'other');
      case Cmd.RENAME: {
        const [from, fname] = this.parent(c.path!);
        const node = this.child(from, fname);
        from.asDir().set(fname, null);
        const [to, tname] = this.parent(c.pathTo!);
        to.asDir().set(tname, node);
        node.touched = node.renamed = true;
        return;
      }
      case Cmd.LINK: {
        const target = this.resolve(c.pathLink!);
        const [dir, name] = this.parent(c.path!);
        dir.asDir().set(name, target);
        target.touched = true;
        if (target.kind === 'unknown') target.kind = 'file';
        return;
      }
      case Cmd.UNLINK:
      case Cmd.RMDIR: {
        const [dir, name] = this.parent(c.path!);
        const node = this.child(dir, name);
        dir.asDir().set(name, null);
        node.touched = true;
        if (c.type === Cmd.RMDIR) node.asDir();
        return;
      }
      case Cmd.WRITE:
      case Cmd.ENCODED_WRITE:
      case Cmd.CLONE:
      case Cmd.TRUNCATE:
      case Cmd.UPDATE_EXTENT:
      case Cmd.FALLOCATE: {
        const n = this.resolve(c.path!);
        n.touched = n.data = true;
        if (n.kind === 'unknown') n.kind = 'file';
        return;
      }
      case Cmd.SET_XATTR:
      case Cmd.REMOVE_XATTR: {
        const n = this.resolve(c.path!);
        n.touched = n.xattr = true;
        return;
      }
      case Cmd.CHMOD:
      case Cmd.CHOWN:
      case Cmd.FILEATTR:
      case Cmd.ENABLE_VERITY: {
        const n = this.resolve(c.path!);
        n.touched = n.meta = true;
        return;
      }
      case Cmd.UTIMES: {
        const n = this.resolve(c.path!);
        n.touched = true;
        n.times = { mtime: c.mtime!, ctime: c.ctime! };
        return;
      }
    }
  }

  /** Computes the new tree's paths of every node still reachable. */
  finish(): void {
    if (!this.root) throw this.inconsistent('no subvol/snapshot command');
    this.byPath.clear();
    const stack: Array<[string, Node]> = [['', this.root]];
    // A directory has one name: one reached again (hard-linked by a damaged or hostile stream,
    // maybe into itself) would make this walk endless.
    const expanded = new Set<Node>();
    while (stack.length) {
      const [p, n] = stack.pop()!;
      this.byPath.set(p, n);
      if (!n.children) continue;
      if (expanded.has(n)) throw this.inconsistent(`directory '${escapePath(p)}' has a second name (a hard link to a directory)`);
      expanded.add(n);
      for (const [name, c] of n.children) if (c) stack.push([join(p, name), c]);
    }
  }

  private inconsistent(what: string): SbkError {
    const at = this.cmd ? ` (${this.cmd.name} command at byte offset ${this.cmd.offset})` : '';
    return new SbkError(`send stream does not fit the tree it describes: ${what}${at}`, ExitCode.corrupt);
  }

  private create(p: string, kind: Kind) {
    const [dir, name] = this.parent(p);
    const n = new Node(this.serial++, null, kind);
    n.touched = true;
    dir.asDir().set(name, n);
  }

  private child(dir: Node, name: string): Node {
    const map = dir.asDir();
    let n = map.get(name);
    if (n === undefined) {
      // Not yet mentioned: the old tree's entry, if the directory has an old tree behind it.
      if (dir.origin === null) throw this.inconsistent(`no entry '${escapePath(name)}'`);
      const origin = join(dir.origin, name);
      n = new Node(this.serial++, origin, 'unknown');
      map.set(name, n);
      this.byOrigin.set(origin, n);
    }
    if (n === null) throw this.inconsistent(`'${escapePath(name)}' was removed earlier`);
    return n;
  }

  private parent(p: string): [Node, string] {
    const parts = p.split('/');
    const name = parts.pop()!;
    let n = this.root!;
    for (const part of parts) n = this.child(n, part);
    return [n, name];
  }

  private resolve(p: string): Node {
    if (p === '') return this.root!;
    const [dir, name] = this.parent(p);
    return this.child(dir, name);
  }
}


/** Replays a send stream into a model (throws SbkError on a corrupt stream). */
export async function modelFromStream(source: AsyncIterable<Buffer | Uint8Array | string> | Iterable<Buffer | Uint8Array | string>): Promise<StreamModel> {
  const model = new StreamModel();
  for await (const c of readSendStream(source)) model.apply(c);
  model.finish();
  return model;
}
