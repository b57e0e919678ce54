// Streaming parser and verifier of the BTRFS send-stream format, versions 1 to 3
// (btrfs-progs Documentation/dev/dev-send-stream.rst; man/sbk.7, STREAMS).
//
//   header   "btrfs-stream\0" le32 version
//   command  le32 len, le16 type, le32 crc32c, then `len` bytes of TLVs (le16 type, le16 len,
//            value); from version 2 the DATA attribute has no length: it is the rest of the command.
//
// Every command's CRC32C (seed 0, computed with the crc field zeroed) is checked, and the stream
// must end with END exactly at its last byte. Errors name the byte offset of the faulty command.
// Bytes are never copied to be checked: the CRC runs over the input chunks in place, and file
// data (WRITE) is skipped unless the caller asks for it.
import { Transform, Writable } from 'node:stream';
import { crc32cUpdate } from './crc32c.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import { sniff, describeKind } from '../input.js';

export const SEND_STREAM_MAGIC = 'btrfs-stream\0';
const MAGIC = Buffer.from(SEND_STREAM_MAGIC, 'latin1');
export const STREAM_HEADER_SIZE = 17;
export const COMMAND_HEADER_SIZE = 10;
/** Newest stream version this parser reads (3 adds ENABLE_VERITY). */
export const MAX_SEND_VERSION = 3;

/** Command types. */
export const Cmd = {
  SUBVOL: 1,
  SNAPSHOT: 2,
  MKFILE: 3,
  MKDIR: 4,
  MKNOD: 5,
  MKFIFO: 6,
  MKSOCK: 7,
  SYMLINK: 8,
  RENAME: 9,
  LINK: 10,
  UNLINK: 11,
  RMDIR: 12,
  SET_XATTR: 13,
  REMOVE_XATTR: 14,
  WRITE: 15,
  CLONE: 16,
  TRUNCATE: 17,
  CHMOD: 18,
  CHOWN: 19,
  UTIMES: 20,
  END: 21,
  UPDATE_EXTENT: 22,
  FALLOCATE: 23,
  FILEATTR: 24,
  ENCODED_WRITE: 25,
  ENABLE_VERITY: 26,
} as const;

/** Names as `btrfs receive --dump` prints them, indexed by command type. */
export const CMD_NAMES: readonly string[] = [
  'unspec', 'subvol', 'snapshot', 'mkfile', 'mkdir', 'mknod', 'mkfifo', 'mksock', 'symlink',
  'rename', 'link', 'unlink', 'rmdir', 'set_xattr', 'remove_xattr', 'write', 'clone', 'truncate',
  'chmod', 'chown', 'utimes', 'end', 'update_extent', 'fallocate', 'fileattr', 'encoded_write',
  'enable_verity',
];

/** Highest command type of each stream version. */
const MAX_CMD = [0, 22, 25, 26];

/** Attribute (TLV) types. */
export const Attr = {
  UUID: 1,
  CTRANSID: 2,
  INO: 3,
  SIZE: 4,
  MODE: 5,
  UID: 6,
  GID: 7,
  RDEV: 8,
  CTIME: 9,
  MTIME: 10,
  ATIME: 11,
  OTIME: 12,
  XATTR_NAME: 13,
  XATTR_DATA: 14,
  PATH: 15,
  PATH_TO: 16,
  PATH_LINK: 17,
  FILE_OFFSET: 18,
  DATA: 19,
  CLONE_UUID: 20,
  CLONE_CTRANSID: 21,
  CLONE_PATH: 22,
  CLONE_OFFSET: 23,
  CLONE_LEN: 24,
  FALLOCATE_MODE: 25,
  FILEATTR: 26,
  UNENCODED_FILE_LEN: 27,
  UNENCODED_LEN: 28,
  UNENCODED_OFFSET: 29,
  COMPRESSION: 30,
  ENCRYPTION: 31,
  VERITY_ALGORITHM: 32,
  VERITY_BLOCK_SIZE: 33,
  VERITY_SALT_DATA: 34,
  VERITY_SIG_DATA: 35,
} as const;

const MAX_ATTR = [0, 24, 31, 35];

/** Longest command accepted: v1 commands fit the kernel's 64 KiB buffer; later versions carry
 *  compressed extents (at most ~144 KiB today). The bound turns a garbage length into a clear
 *  error instead of a wait for bytes that never come. */
const MAX_LEN_V1 = 64 * 1024;
const MAX_LEN_V2 = 16 * 1024 * 1024;

export interface Timespec {
  sec: number;
  nsec: number;
}

/** Nanoseconds since the epoch, comparable with `fs.lstat(p, {bigint: true}).mtimeNs`. */
export const timespecNs = (t: Timespec): bigint => BigInt(t.sec) * 1_000_000_000n + BigInt(t.nsec);

/**
 * One decoded command. Paths are relative to the subvolume root, as raw bytes in a latin1
 * string (one char per byte: names need not be UTF-8). u64 values are numbers (exact below
 * 2^53, far beyond any real offset or id).
 */
export interface SendCommand {
  /** Byte offset of the command's header in the stream. */
  offset: number;
  type: number;
  name: string;
  path?: string;
  pathTo?: string;
  pathLink?: string;
  clonePath?: string;
  uuid?: string;
  cloneUuid?: string;
  ctransid?: number;
  cloneCtransid?: number;
  ino?: number;
  size?: number;
  mode?: number;
  uid?: number;
  gid?: number;
  rdev?: number;
  fileOffset?: number;
  cloneOffset?: number;
  cloneLen?: number;
  atime?: Timespec;
  mtime?: Timespec;
  ctime?: Timespec;
  otime?: Timespec;
  xattrName?: string;
  xattrData?: Buffer;
  fallocateMode?: number;
  fileattr?: number;
  unencodedFileLen?: number;
  unencodedLen?: number;
  unencodedOffset?: number;
  compression?: number;
  encryption?: number;
  /** Length of the DATA attribute (WRITE, ENCODED_WRITE), also when the data is skipped. */
  dataLength?: number;
  /** The file data, only with `wantData`. */
  data?: Buffer;
}

export interface SendStreamSummary {
  version: number;
  /** Commands read, END included. */
  commands: number;
  bytes: number;
  /** From the first command: the subvolume's name and UUID, and for an incremental stream
   *  (SNAPSHOT) the parent's UUID and ctransid. */
  subvolume?: string;
  uuid?: string;
  parentUuid?: string;
  parentCtransid?: number;
}

export interface ReaderOptions {
  /** 'all': decode every command; 'first': only the first (SUBVOL/SNAPSHOT), for the verifier. */
  decode?: 'all' | 'first';
  /** Keep WRITE/ENCODED_WRITE data (copied when a command spans input chunks). Default false. */
  wantData?: boolean;
}

const corruptAt = (offset: number, msg: string) =>
  new SbkError(`corrupt send stream at byte offset ${offset}: ${msg}`, ExitCode.corrupt);

const cmdName = (type: number) => CMD_NAMES[type] ?? `command type ${type}`;

const hex32 = (n: number) => '0x' + n.toString(16).padStart(8, '0');

/** Required attributes per command: what `btrfs receive` would refuse to run without. */
const REQUIRED: Record<number, number[]> = {
  [Cmd.SUBVOL]: [Attr.PATH, Attr.UUID, Attr.CTRANSID],
  [Cmd.SNAPSHOT]: [Attr.PATH, Attr.UUID, Attr.CTRANSID, Attr.CLONE_UUID, Attr.CLONE_CTRANSID],
  [Cmd.MKFILE]: [Attr.PATH],
  [Cmd.MKDIR]: [Attr.PATH],
  [Cmd.MKNOD]: [Attr.PATH, Attr.MODE, Attr.RDEV],
  [Cmd.MKFIFO]: [Attr.PATH],
  [Cmd.MKSOCK]: [Attr.PATH],
  [Cmd.SYMLINK]: [Attr.PATH, Attr.PATH_LINK],
  [Cmd.RENAME]: [Attr.PATH, Attr.PATH_TO],
  [Cmd.LINK]: [Attr.PATH, Attr.PATH_LINK],
  [Cmd.UNLINK]: [Attr.PATH],
  [Cmd.RMDIR]: [Attr.PATH],
  [Cmd.SET_XATTR]: [Attr.PATH, Attr.XATTR_NAME, Attr.XATTR_DATA],
  [Cmd.REMOVE_XATTR]: [Attr.PATH, Attr.XATTR_NAME],
  [Cmd.WRITE]: [Attr.PATH, Attr.FILE_OFFSET, Attr.DATA],
  [Cmd.CLONE]: [Attr.PATH, Attr.FILE_OFFSET, Attr.CLONE_LEN, Attr.CLONE_UUID, Attr.CLONE_CTRANSID, Attr.CLONE_PATH, Attr.CLONE_OFFSET],
  [Cmd.TRUNCATE]: [Attr.PATH, Attr.SIZE],
  [Cmd.CHMOD]: [Attr.PATH, Attr.MODE],
  [Cmd.CHOWN]: [Attr.PATH, Attr.UID, Attr.GID],
  [Cmd.UTIMES]: [Attr.PATH, Attr.ATIME, Attr.MTIME, Attr.CTIME],
  [Cmd.UPDATE_EXTENT]: [Attr.PATH, Attr.FILE_OFFSET, Attr.SIZE],
  [Cmd.FALLOCATE]: [Attr.PATH, Attr.FALLOCATE_MODE, Attr.FILE_OFFSET, Attr.SIZE],
  [Cmd.FILEATTR]: [Attr.PATH, Attr.FILEATTR],
  [Cmd.ENCODED_WRITE]: [Attr.PATH, Attr.FILE_OFFSET, Attr.UNENCODED_FILE_LEN, Attr.UNENCODED_LEN, Attr.UNENCODED_OFFSET, Attr.DATA],
  [Cmd.ENABLE_VERITY]: [Attr.PATH],
};

function formatUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Reads a command body that may lie in several input chunks, copying only what straddles. */
class Pieces {
  private i = 0;
  private at = 0;
  constructor(private readonly parts: Buffer[]) {}
  take(n: number): Buffer {
    const cur = this.parts[this.i];
    if (cur && cur.length - this.at >= n) {
      const b = cur.subarray(this.at, this.at + n);
      this.at += n;
      if (this.at === cur.length) this.next();
      return b;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const p = this.parts[this.i]!;
      const k = Math.min(n - filled, p.length - this.at);
      p.copy(out, filled, this.at, this.at + k);
      filled += k;
      this.at += k;
      if (this.at === p.length) this.next();
    }
    return out;
  }
  skip(n: number): void {
    while (n > 0) {
      const p = this.parts[this.i]!;
      const k = Math.min(n, p.length - this.at);
      n -= k;
      this.at += k;
      if (this.at === p.length) this.next();
    }
  }
  private next() {
    this.i++;
    this.at = 0;
  }
}

/**
 * The push parser every entry point shares: feed it chunks with `write`, call `end` at EOF.
 * Commands are delivered to `onCommand` as soon as they are complete and checked.
 */
export class SendStreamReader {
  /** Bytes consumed so far. */
  offset = 0;
  version = 0;
  commands = 0;
  readonly summary: SendStreamSummary = { version: 0, commands: 0, bytes: 0 };
  private state: 'header' | 'cmdhdr' | 'body' | 'done' = 'header';
  private readonly head = Buffer.alloc(STREAM_HEADER_SIZE);
  private headFill = 0;
  private cmdOffset = 0;
  private cmdLen = 0;
  private cmdType = 0;
  private cmdCrc = 0;
  private crc = 0;
  private remaining = 0;
  private pieces: Buffer[] = [];
  private readonly decodeAll: boolean;
  private readonly wantData: boolean;

  constructor(
    private readonly onCommand: (c: SendCommand) => void = () => {},
    opts: ReaderOptions = {},
  ) {
    this.decodeAll = (opts.decode ?? 'all') === 'all';
    this.wantData = opts.wantData ?? false;
  }

  get ended(): boolean {
    return this.state === 'done';
  }

  write(chunk: Uint8Array): void {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    let pos = 0;
    while (pos < buf.length) {
      switch (this.state) {
        case 'header': {
          const n = Math.min(STREAM_HEADER_SIZE - this.headFill, buf.length - pos);
          buf.copy(this.head, this.headFill, pos, pos + n);
          this.headFill += n;
          pos += n;
          this.offset += n;
          if (this.headFill === STREAM_HEADER_SIZE) this.checkStreamHeader();
          break;
        }
        case 'cmdhdr': {
          const n = Math.min(COMMAND_HEADER_SIZE - this.headFill, buf.length - pos);
          buf.copy(this.head, this.headFill, pos, pos + n);
          this.headFill += n;
          pos += n;
          this.offset += n;
          if (this.headFill === COMMAND_HEADER_SIZE) this.startCommand();
          break;
        }
        case 'body': {
          const n = Math.min(this.remaining, buf.length - pos);
          this.crc = crc32cUpdate(this.crc, buf, pos, pos + n);
          if (this.decodeAll || this.commands === 0) this.pieces.push(buf.subarray(pos, pos + n));
          pos += n;
          this.offset += n;
          this.remaining -= n;
          if (this.remaining === 0) this.finishCommand();
          break;
        }
        case 'done':
          throw corruptAt(this.offset, 'data after the END command (the stream must end there)');
      }
    }
  }

  /** Call at end of input: throws unless the stream ended with END. */
  end(): SendStreamSummary {
    switch (this.state) {
      case 'done':
        return this.summary;
      case 'header':
        if (this.offset === 0) throw new SbkError('expected a btrfs send stream, got empty input', ExitCode.badInput);
        // Short input that does not even start like the magic is not a send stream (as longer
        // input is told at byte 17), not a truncated one.
        if (!this.head.subarray(0, Math.min(this.headFill, MAGIC.length)).equals(MAGIC.subarray(0, Math.min(this.headFill, MAGIC.length)))) {
          const kind = sniff(this.head.subarray(0, this.headFill));
          throw new SbkError(
            `expected a btrfs send stream (starting "btrfs-stream"), got ${kind === 'btrfs-stream' ? 'binary data' : describeKind[kind]}`,
            ExitCode.badInput,
          );
        }
        throw corruptAt(this.offset, `truncated in the ${STREAM_HEADER_SIZE}-byte stream header`);
      case 'cmdhdr':
        if (this.headFill === 0)
          throw corruptAt(this.offset, 'truncated: the stream ends without an END command');
        throw corruptAt(this.offset, `truncated in the header of the command at byte offset ${this.cmdOffset}`);
      case 'body':
        throw corruptAt(
          this.offset,
          `truncated: the ${cmdName(this.cmdType)} command at byte offset ${this.cmdOffset} needs ` +
            `${COMMAND_HEADER_SIZE + this.cmdLen} bytes, the stream ends after ${this.offset - this.cmdOffset}`,
        );
    }
  }

  private checkStreamHeader() {
    if (!this.head.subarray(0, MAGIC.length).equals(MAGIC)) {
      const kind = sniff(this.head);
      throw new SbkError(
        `expected a btrfs send stream (starting "btrfs-stream"), got ${kind === 'btrfs-stream' ? 'binary data' : describeKind[kind]}`,
        ExitCode.badInput,
      );
    }
    const v = this.head.readUInt32LE(13);
    if (v < 1 || v > MAX_SEND_VERSION)
      throw new SbkError(
        `send stream version ${v} (byte offset 13) is not supported: sbk reads versions 1 to ${MAX_SEND_VERSION}`,
        ExitCode.badInput,
      );
    this.version = this.summary.version = v;
    this.state = 'cmdhdr';
    this.headFill = 0;
    this.cmdOffset = this.offset;
  }

  private startCommand() {
    const h = this.head;
    this.cmdLen = h.readUInt32LE(0);
    this.cmdType = h.readUInt16LE(4);
    this.cmdCrc = h.readUInt32LE(6);
    const max = this.version === 1 ? MAX_LEN_V1 : MAX_LEN_V2;
    if (this.cmdLen > max)
      throw corruptAt(this.cmdOffset, `command length ${this.cmdLen} exceeds the ${max}-byte limit of version ${this.version} streams`);
    // The CRC covers the header with its crc field zeroed.
    h.writeUInt32LE(0, 6);
    this.crc = crc32cUpdate(0, h, 0, COMMAND_HEADER_SIZE);
    this.pieces = [];
    this.remaining = this.cmdLen;
    this.state = 'body';
    if (this.cmdLen === 0) this.finishCommand();
  }

  private finishCommand() {
    const at = this.cmdOffset;
    if (this.crc !== this.cmdCrc)
      throw corruptAt(
        at,
        `CRC32C mismatch in the ${cmdName(this.cmdType)} command (stored ${hex32(this.cmdCrc)}, computed ${hex32(this.crc)})`,
      );
    const type = this.cmdType;
    if (type === 0 || type > MAX_CMD[this.version]!)
      throw corruptAt(at, `unknown command type ${type} in a version ${this.version} stream`);
    if (this.commands === 0 && type !== Cmd.SUBVOL && type !== Cmd.SNAPSHOT)
      throw corruptAt(at, `the stream starts with ${cmdName(type)}, not subvol or snapshot`);
    if (this.decodeAll || this.commands === 0) {
      const c = this.decode(type, at);
      if (this.commands === 0) {
        this.summary.subvolume = c.path;
        this.summary.uuid = c.uuid;
        if (type === Cmd.SNAPSHOT) {
          this.summary.parentUuid = c.cloneUuid;
          this.summary.parentCtransid = c.cloneCtransid;
        }
      }
      this.commands++;
      this.summary.commands = this.commands;
      this.summary.bytes = this.offset;
      if (this.decodeAll) this.onCommand(c);
    } else {
      this.commands++;
      this.summary.commands = this.commands;
      this.summary.bytes = this.offset;
    }
    this.pieces = [];
    this.headFill = 0;
    this.cmdOffset = this.offset;
    this.state = type === Cmd.END ? 'done' : 'cmdhdr';
  }

  private decode(type: number, at: number): SendCommand {
    const c: SendCommand = { offset: at, type, name: cmdName(type) };
    const len = this.cmdLen;
    const r = new Pieces(this.pieces);
    const seen = new Set<number>();
    const maxAttr = MAX_ATTR[this.version]!;
    let pos = 0;
    while (pos < len) {
      if (len - pos < 2) throw corruptAt(at, `${c.name}: attribute header cut short`);
      const t = r.take(2).readUInt16LE(0);
      pos += 2;
      if (t === 0 || t > maxAttr) throw corruptAt(at, `${c.name}: invalid attribute type ${t}`);
      let vlen: number;
      if (t === Attr.DATA && this.version >= 2) {
        vlen = len - pos; // v2: DATA is last and runs to the end of the command
      } else {
        if (len - pos < 2) throw corruptAt(at, `${c.name}: attribute header cut short`);
        vlen = r.take(2).readUInt16LE(0);
        pos += 2;
      }
      if (vlen > len - pos) throw corruptAt(at, `${c.name}: attribute ${t} (${vlen} bytes) overruns the command`);
      pos += vlen;
      seen.add(t);
      if (t === Attr.DATA && !this.wantData) {
        r.skip(vlen);
        c.dataLength = vlen;
        continue;
      }
      this.setAttr(c, t, r.take(vlen), at);
    }
    for (const a of REQUIRED[type] ?? []) {
      if (!seen.has(a)) throw corruptAt(at, `the ${c.name} command lacks its attribute ${a}`);
    }
    return c;
  }

  private setAttr(c: SendCommand, t: number, v: Buffer, at: number) {
    const u64 = () => {
      if (v.length !== 8) throw corruptAt(at, `${c.name}: attribute ${t} has ${v.length} bytes, expected 8`);
      return v.readUInt32LE(0) + v.readUInt32LE(4) * 0x1_0000_0000;
    };
    const u32 = () => {
      if (v.length !== 4) throw corruptAt(at, `${c.name}: attribute ${t} has ${v.length} bytes, expected 4`);
      return v.readUInt32LE(0);
    };
    const ts = (): Timespec => {
      if (v.length !== 12) throw corruptAt(at, `${c.name}: time attribute ${t} has ${v.length} bytes, expected 12`);
      return { sec: Number(v.readBigInt64LE(0)), nsec: v.readUInt32LE(8) };
    };
    const uuid = () => {
      if (v.length !== 16) throw corruptAt(at, `${c.name}: UUID attribute ${t} has ${v.length} bytes, expected 16`);
      return formatUuid(v);
    };
    // Strings are kept byte for byte (latin1): a name is any bytes but '/' and NUL.
    const str = () => v.toString('latin1');
    switch (t) {
      case Attr.UUID: c.uuid = uuid(); break;
      case Attr.CTRANSID: c.ctransid = u64(); break;
      case Attr.INO: c.ino = u64(); break;
      case Attr.SIZE: c.size = u64(); break;
      case Attr.MODE: c.mode = u64(); break;
      case Attr.UID: c.uid = u64(); break;
      case Attr.GID: c.gid = u64(); break;
      case Attr.RDEV: c.rdev = u64(); break;
      case Attr.CTIME: c.ctime = ts(); break;
      case Attr.MTIME: c.mtime = ts(); break;
      case Attr.ATIME: c.atime = ts(); break;
      case Attr.OTIME: c.otime = ts(); break;
      case Attr.XATTR_NAME: c.xattrName = str(); break;
      case Attr.XATTR_DATA: c.xattrData = v; break;
      case Attr.PATH: c.path = str(); break;
      case Attr.PATH_TO: c.pathTo = str(); break;
      case Attr.PATH_LINK: c.pathLink = str(); break;
      case Attr.FILE_OFFSET: c.fileOffset = u64(); break;
      case Attr.DATA:
        // Wanted data must not alias the caller's input chunks, which they may reuse.
        c.data = Buffer.from(v);
        c.dataLength = v.length;
        break;
      case Attr.CLONE_UUID: c.cloneUuid = uuid(); break;
      case Attr.CLONE_CTRANSID: c.cloneCtransid = u64(); break;
      case Attr.CLONE_PATH: c.clonePath = str(); break;
      case Attr.CLONE_OFFSET: c.cloneOffset = u64(); break;
      case Attr.CLONE_LEN: c.cloneLen = u64(); break;
      case Attr.FALLOCATE_MODE: c.fallocateMode = u32(); break;
      case Attr.FILEATTR: c.fileattr = u64(); break;
      case Attr.UNENCODED_FILE_LEN: c.unencodedFileLen = u64(); break;
      case Attr.UNENCODED_LEN: c.unencodedLen = u64(); break;
      case Attr.UNENCODED_OFFSET: c.unencodedOffset = u64(); break;
      case Attr.COMPRESSION: c.compression = u32(); break;
      case Attr.ENCRYPTION: c.encryption = u32(); break;
      default: break; // verity attributes: checked by the CRC, not needed by sbk
    }
  }
}

type Chunk = Buffer | Uint8Array | string;
const asBytes = (c: Chunk): Uint8Array => (typeof c === 'string' ? Buffer.from(c, 'latin1') : c);

/**
 * Parses a send stream (a Readable or any async iterable of chunks), yielding each command
 * once it is complete and its CRC checked. Throws SbkError (exit code 4 for corruption, 3 for
 * input that is not a send stream) naming the byte offset.
 */
export async function* readSendStream(source: AsyncIterable<Chunk> | Iterable<Chunk>, opts: { wantData?: boolean } = {}): AsyncGenerator<SendCommand, SendStreamSummary> {
  let batch: SendCommand[] = [];
  const reader = new SendStreamReader((c) => batch.push(c), { decode: 'all', wantData: opts.wantData });
  for await (const chunk of source) {
    reader.write(asBytes(chunk));
    if (batch.length) {
      const out = batch;
      batch = [];
      yield* out;
    }
  }
  return reader.end();
}

/** Checks a whole stream: magic, version, every command's CRC32C, END exactly at the end. */
export async function verifySendStream(source: AsyncIterable<Chunk> | Iterable<Chunk>): Promise<SendStreamSummary> {
  const reader = new SendStreamReader(undefined, { decode: 'first' });
  for await (const chunk of source) reader.write(asBytes(chunk));
  return reader.end();
}

export interface SendStreamVerifier extends Writable {
  /** Set once the stream has finished without error. */
  summary?: SendStreamSummary;
}

/** A Writable sink that verifies what is written to it; it errors (SbkError) on the first fault. */
export function createSendStreamVerifier(): SendStreamVerifier {
  const reader = new SendStreamReader(undefined, { decode: 'first' });
  const w: SendStreamVerifier = new Writable({
    write(chunk: Buffer, _enc, cb) {
      try {
        reader.write(chunk);
        cb();
      } catch (err) {
        cb(err as Error);
      }
    },
    final(cb) {
      try {
        w.summary = reader.end();
        cb();
      } catch (err) {
        cb(err as Error);
      }
    },
  });
  return w;
}

export interface VerifyingPassThrough extends Transform {
  summary?: SendStreamSummary;
}

/**
 * A Transform that passes the stream on unchanged while verifying it (e.g. into
 * `btrfs receive`). A chunk is passed on only after the commands it completes were checked;
 * a truncated stream errors at the end.
 */
export function createVerifyingPassThrough(): VerifyingPassThrough {
  const reader = new SendStreamReader(undefined, { decode: 'first' });
  const t: VerifyingPassThrough = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      try {
        reader.write(chunk);
        cb(null, chunk);
      } catch (err) {
        cb(err as Error);
      }
    },
    flush(cb) {
      try {
        t.summary = reader.end();
        cb();
      } catch (err) {
        cb(err as Error);
      }
    },
  });
  return t;
}

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
    const refuse = (why: string) => corruptAt(c.offset, `${c.name}: ${why}; refused (btrfs send never makes this)`);
    const inside = (p: string | undefined, what: string) => {
      if (p === undefined) return;
      if (p.startsWith('/')) throw refuse(`${what} '${p}' is absolute`);
      if (p.includes('\0')) throw refuse(`${what} has a NUL byte`);
      if (p.split('/').includes('..')) throw refuse(`${what} '${p}' leaves the subvolume ('..')`);
    };
    const notThroughSymlink = (p: string | undefined, what: string) => {
      if (!p || this.symlinks.size === 0) return;
      for (let i = p.indexOf('/'); i >= 0; i = p.indexOf('/', i + 1)) {
        if (this.symlinks.has(p.slice(0, i))) throw refuse(`${what} '${p}' goes through the symlink '${p.slice(0, i)}'`);
      }
    };

    if (c.type === Cmd.SUBVOL || c.type === Cmd.SNAPSHOT) {
      // The subvolume's own name: one component, made in receive's directory.
      const name = c.path ?? '';
      if (name === '' || name === '.' || name === '..' || name.includes('/') || name.includes('\0'))
        throw refuse(`the subvolume name '${name}' is not a plain name`);
      if (c.type === Cmd.SUBVOL) {
        this.symlinks = new Set();
        this.below = new Map();
      }
      this.uuid = c.uuid;
      return;
    }
    inside(c.path, 'path');
    inside(c.pathTo, 'new path');
    inside(c.clonePath, 'clone source');
    if (c.type !== Cmd.SYMLINK) inside(c.pathLink, 'link source'); // a symlink's target is data
    notThroughSymlink(c.path, 'path');
    notThroughSymlink(c.pathTo, 'new path');
    if (c.type === Cmd.LINK) notThroughSymlink(c.pathLink, 'link source');
    if (c.type === Cmd.CLONE && c.cloneUuid === this.uuid) notThroughSymlink(c.clonePath, 'clone source');
    if (FOLLOWS_PATH.has(c.type) && c.path !== undefined && this.symlinks.has(c.path))
      throw refuse(`'${c.path}' is a symlink`);

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
