// The parent's data as it was before an incremental stream changed anything, for the CLONE
// commands that read from the parent. An incremental is applied in place on the tree its parent
// left, but a clone from the parent names a path in the parent's own, unchanged tree and reads
// the data that was there (kernel fs/btrfs/send.c): so before the stream overwrites, truncates or
// removes data of a file that came from the parent, the bytes it destroys are kept in a shadow
// file (per inode, in a scratch directory on the same filesystem, removed at END), and a removed
// name of such a file is linked there instead of being lost. Only destroyed ranges are copied:
// an append, a new file or a rename costs nothing.
//
// A parent path is found again through the renames of the stream (each move of a parent entry
// is recorded, a directory's move covers its descendants) or, once its name is gone, through the
// inode it named. Entries the stream created are told apart by their inode numbers.
import { closeSync, fstatSync, linkSync, lstatSync, mkdirSync, openSync, readSync, rmSync, writeSync, constants } from 'node:fs';
import path from 'node:path';

/** Bytes copied at once when saving or reading ranges. */
const CHUNK = 1024 * 1024;

interface Range {
  start: number;
  end: number;
}

/** What is kept of one inode of the parent. */
interface Saved {
  /** Its size in the parent (when the stream first changed its data or name). */
  size: number;
  /** Ranges of the parent's data saved in `<dir>/<ino>.saved` (sorted, disjoint). */
  ranges: Range[];
  /** A link to the inode in `<dir>/<ino>.live`, made when its parent name went. */
  linked: boolean;
}

/** Where to read a range of the parent's data from. */
export interface ParentSource {
  /** Reads `length` bytes at `offset` of the parent's file into `into` (at 0). */
  read(into: Buffer, offset: number, length: number): void;
  close(): void;
}

const within = (p: string, prefix: string) => p === prefix || p.startsWith(prefix + '/');

export class ParentData {
  /** Inodes the stream created (never the parent's). */
  private readonly created = new Set<number>();
  /** Current path → parent path, of parent entries the stream moved. */
  private readonly origin = new Map<string, string>();
  /** Parent path → current path (the inverse). */
  private readonly current = new Map<string, string>();
  /** Parent path → inode, of parent files whose name the stream removed. */
  private readonly gone = new Map<string, number>();
  private readonly saved = new Map<number, Saved>();
  private made = false;

  /** `abs` turns a volume path into the absolute one; `dir` is the scratch directory. */
  constructor(
    private readonly abs: (rel: string) => Buffer,
    private readonly dir: string,
  ) {}

  /** The stream made this inode. */
  noteCreated(ino: number): void {
    this.created.add(ino);
  }

  isParents(ino: number): boolean {
    return !this.created.has(ino);
  }

  /** The parent path of the parent entry now at `cur`. */
  private originOf(cur: string): string {
    for (let p = cur; ; ) {
      const o = this.origin.get(p);
      if (o !== undefined) return o + cur.slice(p.length);
      const i = p.lastIndexOf('/');
      if (i < 0) return cur;
      p = p.slice(0, i);
    }
  }

  /** Where the parent entry at parent path `orig` is now. */
  private currentOf(orig: string): string {
    for (let p = orig; ; ) {
      const c = this.current.get(p);
      if (c !== undefined) return c + orig.slice(p.length);
      const i = p.lastIndexOf('/');
      if (i < 0) return orig;
      p = p.slice(0, i);
    }
  }

  /** Before `rename(from, to)`: records the move of a parent entry (whatever `to` replaces is removed first). */
  beforeRename(from: string, to: string): void {
    this.beforeRemove(to);
    const st = lstatSync(this.abs(from));
    // Moves recorded below a directory move with it.
    if (st.isDirectory() && this.origin.size > 0) {
      for (const [cur, orig] of [...this.origin]) {
        if (cur !== from && within(cur, from)) {
          this.origin.delete(cur);
          const moved = to + cur.slice(from.length);
          this.origin.set(moved, orig);
          this.current.set(orig, moved);
        }
      }
    }
    if (this.created.has(st.ino)) return;
    const orig = this.originOf(from);
    this.origin.delete(from);
    this.origin.set(to, orig);
    this.current.set(orig, to);
  }

  /** Before the name `rel` is unlinked or replaced: a parent file's inode is kept (a link). */
  beforeRemove(rel: string): void {
    let st;
    try {
      st = lstatSync(this.abs(rel));
    } catch {
      return; // nothing there to lose
    }
    if (!st.isFile() || this.created.has(st.ino)) return;
    const orig = this.originOf(rel);
    const s = this.savedOf(st.ino, st.size);
    if (!s.linked) {
      linkSync(this.abs(rel), this.file(st.ino, 'live'));
      s.linked = true;
    }
    this.gone.set(orig, st.ino);
    this.origin.delete(rel);
    this.current.delete(orig);
  }

  /**
   * Before bytes [start, end) of the open file `fd` are overwritten or cut (end: Infinity). `file`
   * is what fstat said of it when it was opened (the caller opens it once for many writes).
   */
  beforeChange(fd: number, file: { ino: number; size: number; isFile(): boolean }, start: number, end: number): void {
    if (!file.isFile() || this.created.has(file.ino)) return;
    const st = file;
    const s = this.savedOf(st.ino, st.size);
    end = Math.min(end, s.size);
    if (start >= end) return;
    // The parts of [start, end) not saved yet.
    const todo: Range[] = [];
    let at = start;
    for (const r of s.ranges) {
      if (r.end <= at) continue;
      if (r.start >= end) break;
      if (r.start > at) todo.push({ start: at, end: r.start });
      at = Math.max(at, r.end);
    }
    if (at < end) todo.push({ start: at, end });
    if (todo.length === 0) return;
    const out = openSync(this.file(st.ino, 'saved'), constants.O_WRONLY | constants.O_CREAT, 0o600);
    try {
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, end - start));
      for (const r of todo) copyRange(fd, out, r.start, r.end, buf);
    } finally {
      closeSync(out);
    }
    s.ranges = mergeRanges([...s.ranges, ...todo]);
  }

  /** Opens the parent's file at parent path `orig` for reading, or undefined if it had none. */
  open(orig: string, openCurrent: (rel: string) => number): ParentSource | undefined {
    let fd: number;
    const goneIno = this.gone.get(orig);
    if (goneIno !== undefined) fd = openSync(this.file(goneIno, 'live'), constants.O_RDONLY);
    else {
      fd = openCurrent(this.currentOf(orig));
      const st = fstatSync(fd);
      if (!st.isFile() || this.created.has(st.ino)) {
        closeSync(fd);
        return undefined;
      }
    }
    const ino = fstatSync(fd).ino;
    const s = this.saved.get(ino);
    let savedFd: number | undefined;
    if (s?.ranges.length) savedFd = openSync(this.file(ino, 'saved'), constants.O_RDONLY);
    return {
      read: (into, offset, length) => {
        let done = 0;
        while (done < length) {
          const at = offset + done;
          const r = s?.ranges.find((x) => x.start <= at && at < x.end);
          const next = s?.ranges.find((x) => x.start > at);
          const until = Math.min(offset + length, r ? r.end : next ? next.start : Infinity);
          const n = readFully(r ? savedFd! : fd, into, done, until - at, at);
          done += n;
          if (n < until - at) {
            into.fill(0, done, length); // past the parent's end: clone reads zeros, as a hole
            return;
          }
        }
      },
      close: () => {
        closeSync(fd);
        if (savedFd !== undefined) closeSync(savedFd);
      },
    };
  }

  /** Removes the scratch files (at END, and after a failure). */
  dispose(): void {
    if (this.made) rmSync(this.dir, { recursive: true, force: true });
    this.made = false;
  }

  private savedOf(ino: number, size: number): Saved {
    let s = this.saved.get(ino);
    if (!s) this.saved.set(ino, (s = { size, ranges: [], linked: false }));
    return s;
  }

  private file(ino: number, what: 'live' | 'saved'): string {
    if (!this.made) {
      mkdirSync(this.dir, { recursive: true, mode: 0o700 });
      this.made = true;
    }
    return path.join(this.dir, `${ino}.${what}`);
  }
}

/** Reads up to `length` bytes at `pos`; fewer only at the end of the file. */
function readFully(fd: number, into: Buffer, at: number, length: number, pos: number): number {
  let done = 0;
  while (done < length) {
    const n = readSync(fd, into, at + done, length - done, pos + done);
    if (n === 0) break;
    done += n;
  }
  return done;
}

function copyRange(from: number, to: number, start: number, end: number, buf: Buffer): void {
  for (let at = start; at < end; ) {
    const n = readFully(from, buf, 0, Math.min(buf.length, end - at), at);
    if (n === 0) return;
    writeSync(to, buf, 0, n, at);
    at += n;
  }
}

function mergeRanges(rs: Range[]): Range[] {
  rs.sort((a, b) => a.start - b.start);
  const out: Range[] = [];
  for (const r of rs) {
    const last = out[out.length - 1];
    if (last && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else out.push({ ...r });
  }
  return out;
}
