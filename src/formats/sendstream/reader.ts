// Streaming parser and verifier of the BTRFS send-stream format, versions 1 to 3
// (btrfs-progs Documentation/dev/dev-send-stream.rst; man/sbk.7, STREAMS; its numbers are
// constants.ts). To verify a stream without decoding it: a SendStreamReader with decode 'first'.
//
//   header   "btrfs-stream\0" le32 version
//   command  le32 len, le16 type, le32 crc32c, then `len` bytes of TLVs (le16 type, le16 len,
//            value); from version 2 the DATA attribute has no length: it is the rest of the command.
//
// Every command's CRC32C (seed 0, computed with the crc field zeroed) is checked, and the stream
// must end with END exactly at its last byte. Errors name the byte offset of the faulty command.
// Bytes are never copied to be checked: the CRC runs over the input chunks in place, and file
// data (WRITE) is skipped unless the caller asks for it.
import { crc32cUpdate } from './crc32c.js';
import { Pieces } from './pieces.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import {
  Attr,
  Cmd,
  COMMAND_HEADER_SIZE,
  MAX_ATTR,
  MAX_CMD,
  MAX_LEN_V1,
  MAX_LEN_V2,
  MAX_SEND_VERSION,
  REQUIRED,
  SEND_STREAM_MAGIC,
  STREAM_HEADER_SIZE,
  cmdName,
  corruptAt,
} from './constants.js';
import { sniff, describeKind } from '../input.js';

const MAGIC = Buffer.from(SEND_STREAM_MAGIC, 'latin1');

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
  /** 'all': decode every command; 'first': only the first (SUBVOL/SNAPSHOT), to verify a stream
   *  (CRCs, framing, END) at the least cost. */
  decode?: 'all' | 'first';
  /** Keep WRITE/ENCODED_WRITE data (copied into a buffer of its own). Default false. */
  wantData?: boolean;
}

const hex32 = (n: number) => '0x' + n.toString(16).padStart(8, '0');

function formatUuid(b: Buffer, at: number): string {
  const h = b.toString('hex', at, at + 16);
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
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
  private readonly body = new Pieces();
  /** seen[t] === seenMark: attribute t was met in the command being decoded. */
  private readonly seen = new Float64Array(64);
  private seenMark = 0;
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
          if (this.decodeAll || this.commands === 0) this.body.add(buf, pos, pos + n);
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
    this.body.clear();
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
    this.body.clear();
    this.headFill = 0;
    this.cmdOffset = this.offset;
    this.state = type === Cmd.END ? 'done' : 'cmdhdr';
  }

  private decode(type: number, at: number): SendCommand {
    const c: SendCommand = { offset: at, type, name: cmdName(type) };
    const len = this.cmdLen;
    const r = this.body;
    r.rewind();
    const seen = this.seen;
    const mark = ++this.seenMark;
    const maxAttr = MAX_ATTR[this.version]!;
    let pos = 0;
    while (pos < len) {
      if (len - pos < 2) throw corruptAt(at, `${c.name}: attribute header cut short`);
      const t = r.u16();
      pos += 2;
      if (t === 0 || t > maxAttr) throw corruptAt(at, `${c.name}: invalid attribute type ${t}`);
      let vlen: number;
      if (t === Attr.DATA && this.version >= 2) {
        vlen = len - pos; // v2: DATA is last and runs to the end of the command
      } else {
        if (len - pos < 2) throw corruptAt(at, `${c.name}: attribute header cut short`);
        vlen = r.u16();
        pos += 2;
      }
      if (vlen > len - pos) throw corruptAt(at, `${c.name}: attribute ${t} (${vlen} bytes) overruns the command`);
      pos += vlen;
      seen[t] = mark;
      if (t === Attr.DATA) {
        // Wanted data must not alias the caller's input chunks, which they may reuse.
        if (this.wantData) c.data = r.takeCopy(vlen);
        else r.skip(vlen);
        c.dataLength = vlen;
        continue;
      }
      r.take(vlen);
      setAttr(c, t, r.buf, r.at, vlen);
    }
    for (const a of REQUIRED[type] ?? []) {
      if (seen[a] !== mark) throw corruptAt(at, `the ${c.name} command lacks its attribute ${a}`);
    }
    return c;
  }
}

// The value readers of setAttr: `len` bytes of `b` from `i`, the size checked.
function sized(c: SendCommand, t: number, len: number, want: number, what = 'attribute'): void {
  if (len !== want) throw corruptAt(c.offset, `${c.name}: ${what} ${t} has ${len} bytes, expected ${want}`);
}
function u64(c: SendCommand, t: number, b: Buffer, i: number, len: number): number {
  sized(c, t, len, 8);
  return b.readUInt32LE(i) + b.readUInt32LE(i + 4) * 0x1_0000_0000;
}
function u32(c: SendCommand, t: number, b: Buffer, i: number, len: number): number {
  sized(c, t, len, 4);
  return b.readUInt32LE(i);
}
function ts(c: SendCommand, t: number, b: Buffer, i: number, len: number): Timespec {
  sized(c, t, len, 12, 'time attribute');
  // Seconds are a signed 64-bit number.
  return { sec: b.readUInt32LE(i) + b.readInt32LE(i + 4) * 0x1_0000_0000, nsec: b.readUInt32LE(i + 8) };
}
function uuid(c: SendCommand, t: number, b: Buffer, i: number, len: number): string {
  sized(c, t, len, 16, 'UUID attribute');
  return formatUuid(b, i);
}
// Strings are kept byte for byte (latin1): a name is any bytes but '/' and NUL.
const str = (b: Buffer, i: number, len: number) => b.toString('latin1', i, i + len);

/** Sets attribute t of command c from its value: `len` bytes of `b` from `i`. */
function setAttr(c: SendCommand, t: number, b: Buffer, i: number, len: number): void {
  switch (t) {
    case Attr.UUID: c.uuid = uuid(c, t, b, i, len); break;
    case Attr.CTRANSID: c.ctransid = u64(c, t, b, i, len); break;
    case Attr.INO: c.ino = u64(c, t, b, i, len); break;
    case Attr.SIZE: c.size = u64(c, t, b, i, len); break;
    case Attr.MODE: c.mode = u64(c, t, b, i, len); break;
    case Attr.UID: c.uid = u64(c, t, b, i, len); break;
    case Attr.GID: c.gid = u64(c, t, b, i, len); break;
    case Attr.RDEV: c.rdev = u64(c, t, b, i, len); break;
    case Attr.CTIME: c.ctime = ts(c, t, b, i, len); break;
    case Attr.MTIME: c.mtime = ts(c, t, b, i, len); break;
    case Attr.ATIME: c.atime = ts(c, t, b, i, len); break;
    case Attr.OTIME: c.otime = ts(c, t, b, i, len); break;
    case Attr.XATTR_NAME: c.xattrName = str(b, i, len); break;
    // A copy: the value may lie in the reader's scratch buffer or the caller's chunk.
    case Attr.XATTR_DATA: c.xattrData = Buffer.from(b.subarray(i, i + len)); break;
    case Attr.PATH: c.path = str(b, i, len); break;
    case Attr.PATH_TO: c.pathTo = str(b, i, len); break;
    case Attr.PATH_LINK: c.pathLink = str(b, i, len); break;
    case Attr.FILE_OFFSET: c.fileOffset = u64(c, t, b, i, len); break;
    case Attr.CLONE_UUID: c.cloneUuid = uuid(c, t, b, i, len); break;
    case Attr.CLONE_CTRANSID: c.cloneCtransid = u64(c, t, b, i, len); break;
    case Attr.CLONE_PATH: c.clonePath = str(b, i, len); break;
    case Attr.CLONE_OFFSET: c.cloneOffset = u64(c, t, b, i, len); break;
    case Attr.CLONE_LEN: c.cloneLen = u64(c, t, b, i, len); break;
    case Attr.FALLOCATE_MODE: c.fallocateMode = u32(c, t, b, i, len); break;
    case Attr.FILEATTR: c.fileattr = u64(c, t, b, i, len); break;
    case Attr.UNENCODED_FILE_LEN: c.unencodedFileLen = u64(c, t, b, i, len); break;
    case Attr.UNENCODED_LEN: c.unencodedLen = u64(c, t, b, i, len); break;
    case Attr.UNENCODED_OFFSET: c.unencodedOffset = u64(c, t, b, i, len); break;
    case Attr.COMPRESSION: c.compression = u32(c, t, b, i, len); break;
    case Attr.ENCRYPTION: c.encryption = u32(c, t, b, i, len); break;
    default: break; // verity attributes: checked by the CRC, not needed by sbk
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

