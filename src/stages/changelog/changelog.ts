// The changelog of a backup: which paths were added, modified or deleted between two snapshots
// of a volume (man/sbk-changelog.1 states the rules; man/sbk.7, CHANGELOG, the format).
//
// Two methods give the same lines:
//  - stream (default): a metadata-only send stream (`btrfs send --no-data -p OLD NEW`) is
//    replayed on a lazy model of the old tree, which yields the few paths that can differ;
//    those are then compared with lstat in both snapshots. Cost grows with the change.
//  - rsync: `rsync -n -a --delete -i NEW/ OLD/`, each itemized line mapped to the same rules.
//
// Paths are handled as raw bytes in latin1 strings (one char per byte) until they are escaped
// for output: a name may be any bytes but '/' and NUL, not necessarily UTF-8.
import { lstat, readdir, mkdtemp, rm } from 'node:fs/promises';
import type { Stats, BigIntStats } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { execa } from 'execa';
import split2 from 'split2';
import { SbkError, ExitCode } from '../../core/errors.js';
import { Cmd, readSendStream, timespecNs, type SendCommand, type Timespec } from '../../formats/sendstream/reader.js';
import { send } from '../../system/btrfs.js';

export type Action = 'added' | 'modified' | 'deleted';

/** One changelog entry: `rel` is relative to the volume root ('' is the root), raw bytes. */
export interface Change {
  action: Action;
  rel: string;
  dir: boolean;
}

export type Method = 'stream' | 'rsync';

export interface ChangelogOptions {
  /** Also list permission, owner, group and xattr (ACL) changes, as `modified`. */
  allChanges?: boolean;
  signal?: AbortSignal;
  /** Warnings (e.g. what a stream alone cannot tell). */
  warn?: (msg: string) => void;
}

// ---------------------------------------------------------------------------------------------
// Escaping and formatting

const C_ESCAPES: Record<number, string> = { 7: '\\a', 8: '\\b', 9: '\\t', 10: '\\n', 11: '\\v', 12: '\\f', 13: '\\r', 27: '\\e' };
const octal = (b: number) => '\\' + b.toString(8).padStart(3, '0');

/** Length of the valid UTF-8 sequence at i (0 if none), rejecting overlongs and surrogates. */
function utf8SeqLen(s: string, i: number): number {
  const b = s.charCodeAt(i);
  const cont = (k: number) => {
    const c = s.charCodeAt(i + k);
    return c >= 0x80 && c <= 0xbf;
  };
  const b1 = s.charCodeAt(i + 1);
  if (b >= 0xc2 && b <= 0xdf) return cont(1) ? 2 : 0;
  if (b >= 0xe0 && b <= 0xef) {
    if (b === 0xe0 && !(b1 >= 0xa0 && b1 <= 0xbf)) return 0;
    if (b === 0xed && !(b1 >= 0x80 && b1 <= 0x9f)) return 0;
    return cont(1) && cont(2) ? 3 : 0;
  }
  if (b >= 0xf0 && b <= 0xf4) {
    if (b === 0xf0 && !(b1 >= 0x90 && b1 <= 0xbf)) return 0;
    if (b === 0xf4 && !(b1 >= 0x80 && b1 <= 0x8f)) return 0;
    return cont(1) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

/**
 * Escapes a path (raw bytes) so that it sits on one line, the way `btrfs receive --dump` does:
 * `\\` for a backslash; `\a \b \e \f \n \r \t \v`; `\ooo` (octal) for any other control byte,
 * DEL, and every byte that is not part of valid UTF-8. Unlike --dump, spaces and printable
 * UTF-8 characters are kept as they are; the C1 controls (U+0080-U+009F) and the line and
 * paragraph separators (U+2028, U+2029) are escaped byte by byte.
 */
export function escapePath(raw: string): string {
  let out = '';
  for (let i = 0; i < raw.length; ) {
    const b = raw.charCodeAt(i);
    if (b < 0x80) {
      out += b === 0x5c ? '\\\\' : b >= 0x20 && b < 0x7f ? raw[i] : (C_ESCAPES[b] ?? octal(b));
      i++;
      continue;
    }
    const n = utf8SeqLen(raw, i);
    if (n === 0) {
      out += octal(b);
      i++;
      continue;
    }
    const seq = raw.slice(i, i + n);
    const ch = Buffer.from(seq, 'latin1').toString('utf8');
    const cp = ch.codePointAt(0)!;
    if (cp <= 0x9f || cp === 0x2028 || cp === 0x2029) for (let k = 0; k < n; k++) out += octal(seq.charCodeAt(k));
    else out += ch;
    i += n;
  }
  return out;
}

/** Inverse of escapePath: escaped text back to raw bytes (a latin1 string). */
export function unescapePath(text: string): string {
  const bytes = Buffer.from(text, 'utf8').toString('latin1');
  const named: Record<string, number> = { a: 7, b: 8, t: 9, n: 10, v: 11, f: 12, r: 13, e: 27, '\\': 0x5c };
  return bytes.replace(/\\([0-7]{3}|[abtnvfre\\])/g, (_, e: string) =>
    String.fromCharCode(e.length === 3 ? parseInt(e, 8) & 0xff : named[e]!),
  );
}

/** The path as seen inside the container: mount point + rel, a directory ending in '/'. */
export function containerPath(mount: string, rel: string, dir: boolean): string {
  const m = mount.replace(/\/+$/, '');
  const p = rel === '' ? m : `${m}/${rel}`;
  return dir ? `${p}/` : p === '' ? '/' : p;
}

export interface ChangelogLine {
  action: Action;
  /** Raw bytes (latin1), with the mount point and the trailing '/' of directories. */
  path: string;
}

const ACTION_ORDER: Record<Action, number> = { deleted: 0, modified: 1, added: 2 };

/**
 * The documented order: by path, component by component, comparing bytes (so a directory
 * comes just before its contents); for one path, deleted before modified before added.
 */
export function compareLines(a: ChangelogLine, b: ChangelogLine): number {
  return compareKeyed(keyed(a), keyed(b));
}

interface Keyed {
  parts: string[];
  line: ChangelogLine;
}

const keyed = (line: ChangelogLine): Keyed => ({ parts: line.path.split('/').filter(Boolean), line });

function compareKeyed(a: Keyed, b: Keyed): number {
  const pa = a.parts;
  const pb = b.parts;
  // latin1 strings: comparing chars compares bytes.
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    if (pa[i] !== pb[i]) return pa[i]! < pb[i]! ? -1 : 1;
  }
  if (pa.length !== pb.length) return pa.length - pb.length;
  return ACTION_ORDER[a.line.action] - ACTION_ORDER[b.line.action];
}

/** Lines in the documented order (the split paths computed once, not per comparison). */
export function sortLines(lines: ChangelogLine[]): ChangelogLine[] {
  return lines
    .map(keyed)
    .sort(compareKeyed)
    .map((k) => k.line);
}

/** `mount` is an ordinary string (from the LXC config or --mount); paths are raw bytes. */
export function toLines(changes: Iterable<Change>, mount: string): ChangelogLine[] {
  const m = Buffer.from(mount, 'utf8').toString('latin1');
  return [...changes].map((c) => ({ action: c.action, path: containerPath(m, c.rel, c.dir) }));
}

/** Sorted, escaped, newline-terminated text of a changelog. */
export function formatChangelog(lines: ChangelogLine[]): string {
  return sortLines(lines)
    .map((l) => `${l.action} ${escapePath(l.path)}\n`)
    .join('');
}

/** Parses one changelog line (as formatChangelog writes it) back; undefined if malformed. */
export function parseChangelogLine(line: string): ChangelogLine | undefined {
  const m = /^(added|modified|deleted) (\/.*)$/.exec(line);
  return m ? { action: m[1] as Action, path: unescapePath(m[2]!) } : undefined;
}

// ---------------------------------------------------------------------------------------------
// What the two trees hold at a path

type Kind = 'dir' | 'file' | 'symlink' | 'other' | 'unknown';

interface Entry {
  kind: Kind;
  /** Identity: same id on both sides = the same inode (not replaced). */
  id: string;
  st?: BigIntStats;
}

const kindOf = (s: Stats | BigIntStats): Kind =>
  s.isDirectory() ? 'dir' : s.isFile() ? 'file' : s.isSymbolicLink() ? 'symlink' : 'other';

const bytes = (p: string) => Buffer.from(p, 'latin1');
const join = (a: string, b: string) => (a === '' ? b : `${a}/${b}`);
const parentOf = (rel: string) => {
  const i = rel.lastIndexOf('/');
  return i < 0 ? '' : rel.slice(0, i);
};

/**
 * lstat inside a snapshot, with every ancestor checked to be a real directory: a symlink in
 * the middle of a path must never lead out of the snapshot.
 */
class SnapshotView {
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

// ---------------------------------------------------------------------------------------------
// Replaying a send stream on a lazy model of the old tree

/**
 * A node of the model. A node with an `origin` existed in the old tree at that path; its
 * children not yet mentioned by the stream are, implicitly, the old tree's. A node without
 * origin was created by the stream.
 */
class Node {
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

/**
 * Facts about a path on both sides, from the snapshots (exact) or, without them, from the
 * stream alone (best effort: see man/sbk-changelog.1, --from-stream).
 */
interface Facts {
  before(rel: string): Promise<Entry | null>;
  after(rel: string): Promise<Entry | null>;
  /** For a non-directory present on both sides as the same inode: did its content or mtime change? */
  contentChanged(rel: string, o: Entry, n: Entry): boolean;
  metaChanged(rel: string, o: Entry, n: Entry): boolean;
}

class SnapshotFacts implements Facts {
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

class StreamFacts implements Facts {
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

class ChangeSet {
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

const isDir = (e: Entry) => e.kind === 'dir';

/** Applies the rules to one path present on at least one side. */
async function classify(rel: string, facts: Facts, out: ChangeSet, allChanges: boolean): Promise<void> {
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
async function addParentDirs(out: ChangeSet, facts: Facts): Promise<void> {
  const parents = new Set<string>();
  for (const c of out.values()) if (c.action !== 'modified' && c.rel !== '') parents.add(parentOf(c.rel));
  for (const p of parents) {
    if (out.has('added', p) || out.has('deleted', p)) continue;
    const [o, n] = await Promise.all([facts.before(p), facts.after(p)]);
    if (o && n && isDir(o) && isDir(n)) out.add('modified', p, true);
  }
}

// ---------------------------------------------------------------------------------------------
// Method 1: send stream

/** Replays a send stream into a model (throws SbkError on a corrupt stream). */
export async function modelFromStream(source: AsyncIterable<Buffer | Uint8Array | string> | Iterable<Buffer | Uint8Array | string>): Promise<StreamModel> {
  const model = new StreamModel();
  for await (const c of readSendStream(source)) model.apply(c);
  model.finish();
  return model;
}

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
  const r = await execa('btrfs', ['inspect-internal', 'inode-resolve', String(ino), root], {
    stdin: 'ignore',
    encoding: 'buffer',
    reject: false,
    cancelSignal: signal,
  });
  if (r.exitCode !== 0) return [];
  // One path per line, prefixed with `root/`. A name holding a newline cannot be told apart
  // here; such a line does not resolve and is dropped (classify checks every path by lstat).
  const prefix = Buffer.from(root.replace(/\/+$/, '') + '/', 'utf8').toString('latin1');
  return Buffer.from(r.stdout as Uint8Array)
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

// ---------------------------------------------------------------------------------------------
// Method 2: rsync dry run

/** rsync's escaping of names in --out-format (LC_ALL=C): `\#ooo` for each unprintable byte. */
export function unescapeRsync(name: string): string {
  return name.replace(/\\#([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8) & 0xff));
}

export interface RsyncItem {
  /** 11 characters, `YXcstpoguax`, or `*deleting  `. */
  flags: string;
  /** Raw bytes, no trailing '/'; '' for the root. */
  rel: string;
  dir: boolean;
}

/** Parses one line of `rsync -i --out-format='%i %n'`; undefined for anything else. */
export function parseRsyncLine(line: string): RsyncItem | undefined {
  if (line.length < 13 || line[11] !== ' ') return undefined;
  const flags = line.slice(0, 11);
  if (!/^(\*deleting  |[<>ch.][fdLDS][ .+?a-zA-Z]{9})$/.test(flags)) return undefined;
  let name = unescapeRsync(line.slice(12));
  const slash = name.endsWith('/');
  if (slash) name = name.slice(0, -1);
  if (name === '.') name = '';
  const deleting = flags.startsWith('*');
  return { flags, rel: name, dir: deleting ? slash : flags[1] === 'd' };
}

/**
 * The rules applied to one rsync item. `facts` supplies the old side for new items (a type
 * change shows in rsync as a new item only).
 */
async function classifyRsync(item: RsyncItem, facts: Facts, out: ChangeSet, allChanges: boolean): Promise<void> {
  const f = item.flags;
  if (f.startsWith('*deleting')) return out.add('deleted', item.rel, item.dir);
  if (f.slice(2) === '+++++++++') {
    const o = await facts.before(item.rel);
    if (!o) return out.add('added', item.rel, item.dir);
    if (isDir(o) !== item.dir) {
      out.add('deleted', item.rel, isDir(o));
      out.add('added', item.rel, item.dir);
    } else if (!item.dir) out.add('modified', item.rel, false);
    return;
  }
  // Attribute letters at fixed places: c(ontent/target) s(ize) t(ime) p o g u a x.
  const content = f[2] === 'c' || f[3] === 's' || f[4] === 't' || f[4] === 'T';
  const meta = f[5] === 'p' || f[6] === 'o' || f[7] === 'g' || f[9] === 'a' || f[10] === 'x';
  if (!item.dir && content) out.add('modified', item.rel, false);
  else if (allChanges && meta) out.add('modified', item.rel, item.dir);
}

/** `rsync -n -a --delete -i NEW/ OLD/`, mapped to the rules. OLD null: everything is added. */
export async function changesByRsync(oldDir: string | null, newDir: string, opts: ChangelogOptions = {}): Promise<Change[]> {
  let empty: string | undefined;
  const dest = oldDir ?? (empty = await mkdtemp(path.join(os.tmpdir(), 'sbk-changelog-empty-')));
  try {
    // --modify-window=-1: compare mtimes to the nanosecond (rsync's default is whole seconds,
    // which misses a same-size rewrite within the second of the snapshot).
    const args = ['-n', '-a', '--delete', '-i', '--modify-window=-1', '--out-format=%i %n'];
    if (opts.allChanges) args.push('-X', '-A');
    args.push(`${newDir}/`, `${dest}/`);
    // LC_ALL=C: rsync then escapes every non-ASCII byte as \#ooo, so its output decodes losslessly.
    const child = execa('rsync', args, {
      env: { LC_ALL: 'C' },
      stdin: 'ignore',
      buffer: { stdout: false, stderr: true },
      cancelSignal: opts.signal,
    });
    const facts = new SnapshotFacts(new SnapshotView(oldDir), new SnapshotView(newDir));
    const out = new ChangeSet();
    let lineErr: unknown;
    try {
      for await (const line of (child.stdout as Readable).pipe(split2('\n')) as AsyncIterable<string>) {
        if (line === '') continue;
        const item = parseRsyncLine(line);
        if (!item) {
          opts.warn?.(`ignoring an unexpected line from rsync: ${JSON.stringify(line)}`);
          continue;
        }
        // With no old side, the root is simply added (below), whatever rsync says of it.
        if (item.rel === '' && !oldDir) continue;
        await classifyRsync(item, facts, out, !!opts.allChanges);
      }
    } catch (err) {
      lineErr = err;
    }
    try {
      await child;
    } catch (err) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      const e = err as { stderr?: string; shortMessage?: string; code?: string };
      if (e.code === 'ENOENT') throw new SbkError('rsync not found: install rsync (apt-get install rsync)', ExitCode.failure);
      const detail = (e.stderr ?? '').trim().split('\n').filter(Boolean).slice(-2).join('; ') || e.shortMessage;
      throw new SbkError(`rsync dry run failed: ${detail}`, ExitCode.failure, { cause: err });
    }
    if (lineErr) throw lineErr;
    if (!oldDir) out.add('added', '', true);
    await addParentDirs(out, facts);
    return out.values();
  } finally {
    if (empty) await rm(empty, { recursive: true, force: true });
  }
}

/**
 * Every path of a snapshot as added (a first Full, a new volume), the root too: a readdir walk
 * that follows no symlink. Both methods would list the same paths, but on 50,000 files a whole
 * `btrfs send --no-data`, replayed and lstat'ed path by path, took 8–12 s and rsync about 1 s,
 * the walk 0.02–0.4 s (bench/changelog.mjs, idle and loaded 2-core box).
 */
export async function changesAllAdded(root: string, opts: ChangelogOptions = {}): Promise<Change[]> {
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
