// One volume's replay: the send streams of a chain applied, command by command, to a plain
// directory with ordinary system calls (what `btrfs receive` does, without BTRFS). The Full
// (SUBVOL) fills an empty directory; each incremental (SNAPSHOT) is applied in place to the tree
// the one before left, reading its clones from the parent through ParentData. Every command
// passes the receive guard first (nothing outside the directory, never through a symlink the
// stream made). The calls are synchronous: the tree is the only state, and a command is applied
// before the next is parsed. What the tree cannot hold as this user (owners, device nodes,
// privileged xattrs) is noted per inode for the overlay.
import {
  closeSync,
  constants,
  fstatSync,
  ftruncateSync,
  linkSync,
  lchownSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readSync,
  renameSync,
  rmdirSync,
  symlinkSync,
  unlinkSync,
  chmodSync,
  writeSync,
} from 'node:fs';
import type { Stats } from 'node:fs';
import path from 'node:path';
import type { SendCommand, Timespec } from '../../../formats/sendstream/reader.js';
import { Cmd, corruptAt } from '../../../formats/sendstream/constants.js';
import { ReceiveGuard } from '../../../formats/sendstream/guard.js';
import { escapePath } from '../../../formats/changelog-lines.js';
import { makeSpecialFile, NotPermitted, type SpecialKind } from '../../../system/special-files.js';
import type { XattrWriter } from '../../../system/xattr.js';
import { SbkError, ExitCode, describeSystemError } from '../../../core/errors.js';
import { ParentData, type ParentSource } from './parent-data.js';
import type { MetaOverlayEntry } from './overlay.js';

const SLASH = Buffer.from('/');
const CHUNK = 1024 * 1024;
/** Errors that say the stream does not fit the tree it is applied to. */
const MISFIT = new Set(['ENOENT', 'EEXIST', 'ENOTEMPTY', 'ENOTDIR', 'EISDIR']);

export interface VolumeContext {
  /** The volume's name, for messages and the overlay. */
  volume: string;
  /** Its directory (made by the caller, empty before a Full). */
  dir: string;
  /** A scratch directory on the same filesystem, for this volume alone. */
  scratch: string;
  xattrs: XattrWriter;
}

/** The open file the last WRITE went to: the next ones usually go there too. */
interface OpenFile {
  rel: string;
  fd: number;
  /** In an incremental: what it was when opened (ParentData tells the parent's files by it). */
  stat?: Stats;
}

const sec = (t: Timespec) => t.sec + t.nsec / 1e9;

export class VolumeReplay {
  /** One guard through the chain: it knows the symlinks the earlier streams made. */
  private readonly guard = new ReceiveGuard();
  private readonly dirBuf: Buffer;
  private readonly isRoot = process.getuid?.() === 0;
  /** The subvolume the tree is now (the last stream's UUID), and the stream being applied. */
  private uuid?: string;
  private streamUuid?: string;
  private parentUuid?: string;
  private parent?: ParentData;
  private out?: OpenFile;
  private nodes = 0;
  /** What the tree could not hold, by inode. */
  readonly overlay = new Map<number, MetaOverlayEntry>();
  private cmd?: SendCommand;

  constructor(private readonly ctx: VolumeContext) {
    this.dirBuf = Buffer.from(ctx.dir);
  }

  /** The absolute path (bytes) of a path of the stream. */
  private abs = (rel: string): Buffer => (rel === '' ? this.dirBuf : Buffer.concat([this.dirBuf, SLASH, Buffer.from(rel, 'latin1')]));

  /** Applies one command; a failure names it, its path and the byte offset. */
  apply(c: SendCommand): void {
    this.cmd = c;
    this.guard.check(c);
    if (this.out && (this.out.rel !== c.path || (c.type !== Cmd.WRITE && c.type !== Cmd.CLONE && c.type !== Cmd.TRUNCATE))) this.closeOut();
    try {
      this.run(c);
    } catch (err) {
      throw this.explain(err, c);
    }
  }

  /** Ends the stream being applied (after its END command, or after a failure). */
  finish(): void {
    this.closeOut();
    this.parent?.dispose();
    this.parent = undefined;
  }

  private run(c: SendCommand): void {
    const p = c.path!;
    switch (c.type) {
      case Cmd.SUBVOL:
        this.begin(c, false);
        return;
      case Cmd.SNAPSHOT:
        this.begin(c, true);
        return;
      case Cmd.MKFILE:
        closeSync(this.created(openSync(this.abs(p), constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600)));
        return;
      case Cmd.MKDIR:
        mkdirSync(this.abs(p), 0o700);
        this.createdAt(p);
        return;
      case Cmd.MKNOD:
        this.special(p, kindOf(c.mode!), c.mode!, c.rdev!);
        return;
      case Cmd.MKFIFO:
        this.special(p, 'fifo', c.mode ?? 0o600, 0);
        return;
      case Cmd.MKSOCK:
        this.special(p, 'sock', c.mode ?? 0o600, 0);
        return;
      case Cmd.SYMLINK:
        symlinkSync(Buffer.from(c.pathLink!, 'latin1'), this.abs(p));
        this.createdAt(p);
        return;
      case Cmd.RENAME:
        this.parent?.beforeRename(p, c.pathTo!);
        renameSync(this.abs(p), this.abs(c.pathTo!));
        return;
      case Cmd.LINK:
        linkSync(this.abs(c.pathLink!), this.abs(p));
        return;
      case Cmd.UNLINK:
        this.parent?.beforeRemove(p);
        this.forgetIfLast(p);
        unlinkSync(this.abs(p));
        return;
      case Cmd.RMDIR:
        rmdirSync(this.abs(p));
        return;
      case Cmd.SET_XATTR:
        this.setXattr(p, c.xattrName!, c.xattrData!);
        return;
      case Cmd.REMOVE_XATTR:
        this.removeXattr(p, c.xattrName!);
        return;
      case Cmd.WRITE:
        this.write(p, c.fileOffset!, c.data!);
        return;
      case Cmd.CLONE:
        this.clone(c);
        return;
      case Cmd.TRUNCATE: {
        const fd = this.output(p);
        this.parent?.beforeChange(fd, this.out!.stat!, c.size!, Infinity);
        ftruncateSync(fd, c.size!);
        return;
      }
      case Cmd.CHMOD:
        chmodSync(this.abs(p), c.mode! & 0o7777);
        return;
      case Cmd.CHOWN:
        this.chown(p, c.uid!, c.gid!);
        return;
      case Cmd.UTIMES:
        lutimesSync(this.abs(p), sec(c.atime!), sec(c.mtime!));
        return;
      case Cmd.END:
        this.ctx.xattrs.flush();
        this.uuid = this.streamUuid;
        this.finish();
        return;
      case Cmd.FILEATTR:
        return; // inode flags: btrfs receive does not apply them either
      case Cmd.UPDATE_EXTENT:
        throw this.cannot('it is a stream without file data (btrfs send --no-data), which cannot be restored');
      default:
        throw this.cannot(`the replay does not apply ${c.name} commands (send streams of version 2 or 3 with compressed or fallocated data, or fs-verity); restore it with btrfs receive on BTRFS`);
    }
  }

  private begin(c: SendCommand, incremental: boolean): void {
    if (incremental) {
      if (this.uuid === undefined) throw this.misfit('an incremental stream, but no earlier stream of this volume was replayed');
      if (c.cloneUuid !== this.uuid)
        throw this.misfit(`an incremental stream of parent ${c.cloneUuid}, but the volume replayed so far is ${this.uuid}`);
      this.parent = new ParentData(this.abs, path.join(this.ctx.scratch, 'parent'));
    }
    this.streamUuid = c.uuid;
    this.parentUuid = c.cloneUuid;
  }

  private cannot(why: string): SbkError {
    return corruptAt(this.cmd!.offset, `${this.cmd!.name}: ${why}`);
  }

  private misfit(why: string): SbkError {
    return corruptAt(this.cmd!.offset, `${this.cmd!.name}: ${why}`);
  }

  /** A system error as a one-line SbkError naming the command and its path. */
  private explain(err: unknown, c: SendCommand): unknown {
    if (err instanceof SbkError) return err;
    const code = (err as NodeJS.ErrnoException).code;
    if (typeof code !== 'string') return err;
    const what = `${c.name} ${escapePath(c.path ?? '')}${c.pathTo !== undefined ? ` -> ${escapePath(c.pathTo)}` : ''}`;
    if (MISFIT.has(code))
      return corruptAt(c.offset, `${what}: ${(err as Error).message.split(':')[0]} (the stream does not apply to the tree replayed so far)`);
    const e = describeSystemError(err, `${this.ctx.volume}: ${what}`);
    return e ?? err;
  }

  /** Notes a new inode (incrementals tell the parent's files from the stream's by it). */
  private created(fd: number): number {
    if (this.parent || this.overlay.size) this.fresh(fstatSync(fd).ino);
    return fd;
  }

  private createdAt(rel: string): void {
    if (this.parent || this.overlay.size) this.fresh(lstatSync(this.abs(rel)).ino);
  }

  private fresh(ino: number): void {
    this.parent?.noteCreated(ino);
    this.overlay.delete(ino); // a number freed earlier and given again
  }

  /** Device nodes, fifos and sockets are made at a plain name in the scratch dir and moved in. */
  private special(rel: string, kind: SpecialKind, mode: number, rdev: number): void {
    const at = path.join(this.ctx.scratch, `node-${this.nodes++}`);
    let placeholder = false;
    try {
      makeSpecialFile(at, kind, mode, rdev);
    } catch (err) {
      if (!(err instanceof NotPermitted)) throw err;
      // Not as this user: an empty file holds the place, the overlay says what it is.
      closeSync(openSync(at, constants.O_CREAT | constants.O_EXCL | constants.O_WRONLY, 0o600));
      placeholder = true;
    }
    renameSync(at, this.abs(rel));
    this.createdAt(rel);
    if (placeholder) this.note(lstatSync(this.abs(rel)).ino, { kind, rdev });
  }

  private note(ino: number, e: MetaOverlayEntry): void {
    const had = this.overlay.get(ino);
    this.overlay.set(ino, had ? { ...had, ...e, xattrs: e.xattrs ? { ...had.xattrs, ...e.xattrs } : had.xattrs } : e);
  }

  /** Before the last name of an inode goes, its overlay entry goes too (its number may be reused). */
  private forgetIfLast(rel: string): void {
    if (this.overlay.size === 0) return;
    const st = lstatSync(this.abs(rel));
    if (st.nlink <= 1) this.overlay.delete(st.ino);
  }

  private chown(rel: string, uid: number, gid: number): void {
    // A chown clears file capabilities: sets queued before it go first.
    this.ctx.xattrs.flush();
    try {
      lchownSync(this.abs(rel), uid, gid);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EPERM' && (err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
      this.note(lstatSync(this.abs(rel)).ino, { uid, gid });
    }
  }

  private setXattr(rel: string, name: string, value: Buffer): void {
    if (!this.isRoot && !name.startsWith('user.') && !name.startsWith('system.posix_acl_')) {
      this.note(lstatSync(this.abs(rel)).ino, { xattrs: { [name]: value } });
      return;
    }
    this.ctx.xattrs.set(this.abs(rel), `${this.ctx.volume}/${escapePath(rel)}`, name, value);
  }

  private removeXattr(rel: string, name: string): void {
    const e = this.overlay.get(lstatSync(this.abs(rel)).ino);
    if (e?.xattrs && name in e.xattrs) {
      delete e.xattrs[name];
      return;
    }
    this.ctx.xattrs.remove(this.abs(rel), `${this.ctx.volume}/${escapePath(rel)}`, name);
  }

  /** The file at `rel`, open for writing (kept open for the commands that follow). */
  private output(rel: string): number {
    if (this.out?.rel === rel) return this.out.fd;
    this.closeOut();
    // In an incremental the old bytes may have to be read before they are overwritten (ParentData).
    const fd = openSync(this.abs(rel), (this.parent ? constants.O_RDWR : constants.O_WRONLY) | constants.O_NOFOLLOW);
    this.out = { rel, fd, stat: this.parent ? fstatSync(fd) : undefined };
    return fd;
  }

  private closeOut(): void {
    if (!this.out) return;
    const fd = this.out.fd;
    this.out = undefined;
    closeSync(fd);
  }

  /** Only the data given is written: the holes between stay holes. */
  private write(rel: string, offset: number, data: Buffer): void {
    const fd = this.output(rel);
    this.parent?.beforeChange(fd, this.out!.stat!, offset, offset + data.length);
    for (let done = 0; done < data.length; ) done += writeSync(fd, data, done, data.length - done, offset + done);
  }

  /** A range copied from this subvolume (its path as the stream built it) or from the parent (its path there, its data before this stream). */
  private clone(c: SendCommand): void {
    const len = c.cloneLen!;
    const fd = this.output(c.path!);
    let src: ParentSource;
    if (c.cloneUuid === this.streamUuid) src = this.sourceAt(c.clonePath!);
    else if (this.parent && c.cloneUuid === this.parentUuid) {
      const s = this.parent.open(c.clonePath!, (rel) => this.openNoSymlink(rel));
      if (!s) throw this.misfit(`the parent has no file ${escapePath(c.clonePath!)} to clone from`);
      src = s;
    } else throw this.cannot(`clones from subvolume ${c.cloneUuid}, which is neither this one nor its parent (btrfs send -c); the replay cannot read it`);
    try {
      this.parent?.beforeChange(fd, this.out!.stat!, c.fileOffset!, c.fileOffset! + len);
      const buf = Buffer.allocUnsafe(Math.min(CHUNK, len));
      // Within one file the source may overlap the target: copy backwards when it lies before.
      const backwards = c.cloneUuid === this.streamUuid && c.clonePath === c.path && c.cloneOffset! < c.fileOffset!;
      for (let done = 0; done < len; ) {
        const n = Math.min(buf.length, len - done);
        const at = backwards ? len - done - n : done;
        src.read(buf, c.cloneOffset! + at, n);
        for (let w = 0; w < n; ) w += writeSync(fd, buf, w, n - w, c.fileOffset! + at + w);
        done += n;
      }
    } finally {
      src.close();
    }
  }

  /** A clone source in this subvolume, read as it is now. */
  private sourceAt(rel: string): ParentSource {
    const fd = this.openNoSymlink(rel);
    return {
      read: (into, offset, length) => {
        let done = 0;
        while (done < length) {
          const n = readSync(fd, into, done, length - done, offset + done);
          if (n === 0) {
            into.fill(0, done, length);
            return;
          }
          done += n;
        }
      },
      close: () => closeSync(fd),
    };
  }

  /** Opens a regular file to read, refusing a path through (or to) any symlink. */
  private openNoSymlink(rel: string): number {
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) {
      if (lstatSync(this.abs(parts.slice(0, i).join('/'))).isSymbolicLink())
        throw this.cannot(`clone source '${escapePath(rel)}' goes through a symlink; refused (btrfs send never makes this)`);
    }
    const fd = openSync(this.abs(rel), constants.O_RDONLY | constants.O_NOFOLLOW);
    if (!fstatSync(fd).isFile()) {
      closeSync(fd);
      throw this.cannot(`clone source '${escapePath(rel)}' is not a regular file`);
    }
    return fd;
  }

  /** The overlay by path relative to the volume (latin1 strings), found by one walk of the tree. */
  overlayByPath(): Map<string, MetaOverlayEntry> {
    const out = new Map<string, MetaOverlayEntry>();
    if (this.overlay.size === 0) return out;
    const walk = (rel: string) => {
      const st = lstatSync(this.abs(rel));
      const e = this.overlay.get(st.ino);
      if (e) out.set(rel, { ...e, mode: st.mode & 0o7777 });
      if (st.isDirectory())
        for (const n of namesIn(this.abs(rel))) walk(rel === '' ? n : `${rel}/${n}`);
    };
    walk('');
    return out;
  }
}

function kindOf(mode: number): SpecialKind {
  switch (mode & constants.S_IFMT) {
    case constants.S_IFCHR:
      return 'chr';
    case constants.S_IFBLK:
      return 'blk';
    case constants.S_IFIFO:
      return 'fifo';
    case constants.S_IFSOCK:
      return 'sock';
  }
  throw new SbkError(`mknod of mode ${mode.toString(8)}: not a device, fifo or socket; refused`, ExitCode.corrupt);
}

/** Names in a directory as latin1 strings (one char per byte). */
function namesIn(dir: Buffer): string[] {
  return readdirSync(dir, { encoding: 'buffer' }).map((b) => b.toString('latin1'));
}
