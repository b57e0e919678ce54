// Splitting a stream of concatenated gzip members (RFC 1952), as `sbk-pack -o -` writes them (one
// member per archive), for `sbk-pack --store`: each member's bytes are handed out exactly as read,
// to be stored as they are, while a raw inflater (one per member: zlib stops at the end of the
// deflate data and says how much input it used, which is how the member's end is found) gives
// its content, and the member's trailer (CRC-32, length) is checked against that content.
import { Transform, type Readable } from 'node:stream';
import zlib from 'node:zlib';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { CompressedMember, MemberReader } from './codec.js';
import { crc32 } from './crc32.js';

/** Pulls the input chunk by chunk, with room to push back what belongs to the next member. */
class ByteReader {
  private readonly it: AsyncIterator<Buffer>;
  private pending: Buffer[] = [];
  /** Bytes handed out so far (for messages). */
  offset = 0;
  constructor(private readonly stream: Readable) {
    this.it = (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }
  async next(): Promise<Buffer | undefined> {
    let b = this.pending.shift();
    if (!b) {
      const r = await this.it.next();
      if (r.done) return undefined;
      b = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    }
    this.offset += b.length;
    return b;
  }
  unshift(b: Buffer): void {
    if (b.length === 0) return;
    this.offset -= b.length;
    this.pending.unshift(b);
  }
  /** Exactly n bytes, or fewer at the end of the input. */
  async read(n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let have = 0;
    while (have < n) {
      const b = await this.next();
      if (!b) break;
      const take = Math.min(n - have, b.length);
      parts.push(b.subarray(0, take));
      this.unshift(b.subarray(take));
      have += take;
    }
    return Buffer.concat(parts);
  }
  /** Up to and including the next zero byte (a gzip FNAME/FCOMMENT field). */
  async readZeroTerminated(limit: number): Promise<Buffer | undefined> {
    const parts: Buffer[] = [];
    let have = 0;
    for (;;) {
      const b = await this.next();
      if (!b) return undefined;
      const z = b.indexOf(0);
      if (z >= 0) {
        parts.push(b.subarray(0, z + 1));
        this.unshift(b.subarray(z + 1));
        return Buffer.concat(parts);
      }
      parts.push(b);
      have += b.length;
      if (have > limit) return undefined;
    }
  }
  destroy(): void {
    this.stream.destroy();
  }
}

const GZ_FHCRC = 2;
const GZ_FEXTRA = 4;
const GZ_FNAME = 8;
const GZ_FCOMMENT = 16;

/** Reads one gzip member header; undefined at the end of the input. */
async function readGzipHeader(r: ByteReader, index: number, source: string): Promise<Buffer | undefined> {
  const at = `gzip member ${index + 1} (byte ${r.offset})`;
  const cut = () => new SbkError(`${source}: the gzip stream is cut short in the header of ${at}`, ExitCode.corrupt);
  const fixed = await r.read(10);
  if (fixed.length === 0) return undefined;
  if (fixed[0] !== 0x1f || (fixed.length > 1 && fixed[1] !== 0x8b))
    throw new SbkError(
      index === 0
        ? `${source}: not gzip data`
        : `${source}: ${fixed.length < 10 ? 'a few' : 'more'} bytes after archive ${index} that are not a gzip member (trailing garbage)`,
      index === 0 ? ExitCode.badInput : ExitCode.corrupt,
    );
  if (fixed.length < 10) throw cut();
  if (fixed[2] !== 8) throw new SbkError(`${source}: ${at} uses compression method ${fixed[2]}, not deflate`, ExitCode.corrupt);
  const flags = fixed[3]!;
  if (flags & 0xe0) throw new SbkError(`${source}: ${at} has reserved flag bits set`, ExitCode.corrupt);
  const parts = [fixed];
  if (flags & GZ_FEXTRA) {
    const len = await r.read(2);
    if (len.length < 2) throw cut();
    const extra = await r.read(len.readUInt16LE(0));
    if (extra.length < len.readUInt16LE(0)) throw cut();
    parts.push(len, extra);
  }
  for (const f of [GZ_FNAME, GZ_FCOMMENT]) {
    if (!(flags & f)) continue;
    const field = await r.readZeroTerminated(64 * 1024);
    if (!field) throw cut();
    parts.push(field);
  }
  if (flags & GZ_FHCRC) {
    const hcrc = await r.read(2);
    if (hcrc.length < 2) throw cut();
    if ((crc32(Buffer.concat(parts), 0) & 0xffff) !== hcrc.readUInt16LE(0))
      throw new SbkError(`${source}: ${at} fails its header CRC`, ExitCode.corrupt);
    parts.push(hcrc);
  }
  return Buffer.concat(parts);
}

/** Writes to a zlib stream; resolves when the chunk has been processed (all its output produced). */
function zwrite(z: zlib.InflateRaw, b: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    z.write(b, (err) => (err ? reject(err) : resolve()));
  });
}

/** One member: its header was read; the rest is read as `raw` is iterated. */
class GzipMember implements CompressedMember {
  private readonly inflater = zlib.createInflateRaw({ chunkSize: 256 * 1024 });
  readonly plain: Transform;
  /** Read once: the generator starts reading only when iterated. */
  readonly raw: AsyncIterable<Buffer> = this.read();
  private crc = 0;
  private size = 0;
  private trailer: Buffer | undefined;

  constructor(
    private readonly reader: ByteReader,
    private readonly header: Buffer,
    private readonly index: number,
    private readonly source: string,
    private readonly name: () => string | undefined,
  ) {
    // The content is counted and CRC'd on its way out, for the trailer's check.
    this.plain = new Transform({
      transform: (chunk: Buffer, _enc, cb) => {
        this.crc = crc32(chunk, this.crc);
        this.size += chunk.length;
        cb(null, chunk);
      },
    });
    this.inflater.on('error', (err) => this.plain.destroy(err));
    this.inflater.pipe(this.plain);
  }

  private label(): string {
    const name = this.name();
    return `archive ${this.index + 1}${name ? ` (${name})` : ''}`;
  }

  private cut(where: string): SbkError {
    return new SbkError(`${this.source}: the gzip stream is cut short ${where} of ${this.label()}`, ExitCode.corrupt);
  }

  private async *read(): AsyncGenerator<Buffer> {
    yield this.header;
    for (;;) {
      const chunk = await this.reader.next();
      if (!chunk) throw this.cut('inside the compressed data');
      const before = this.inflater.bytesWritten;
      try {
        await zwrite(this.inflater, chunk);
      } catch (err) {
        if (err instanceof SbkError) throw err;
        throw new SbkError(`${this.source}: the gzip data of archive ${this.index + 1} is corrupt (${(err as Error).message})`, ExitCode.corrupt, {
          cause: err,
        });
      }
      const used = this.inflater.bytesWritten - before;
      if (used > 0) yield used === chunk.length ? chunk : chunk.subarray(0, used);
      if (used < chunk.length) {
        // The deflate data ended inside this chunk: the rest is the member's trailer and what follows.
        this.reader.unshift(chunk.subarray(used));
        break;
      }
    }
    const trailer = await this.reader.read(8);
    if (trailer.length < 8) throw this.cut('in the gzip trailer');
    this.trailer = trailer;
    yield trailer;
  }

  check(): void {
    const t = this.trailer;
    if (!t || t.readUInt32LE(0) !== this.crc >>> 0 || t.readUInt32LE(4) !== this.size % 2 ** 32)
      throw new SbkError(`${this.source}: ${this.label()} fails its gzip CRC/length check`, ExitCode.corrupt);
  }

  destroy(err?: Error): void {
    this.inflater.destroy(err);
    if (err) this.plain.destroy(err);
  }
}

class GzipMemberReader implements MemberReader {
  private readonly reader: ByteReader;
  private index = 0;
  constructor(
    input: Readable,
    private readonly source: string,
  ) {
    this.reader = new ByteReader(input);
  }

  async next(name: () => string | undefined): Promise<CompressedMember | undefined> {
    const index = this.index;
    const header = await readGzipHeader(this.reader, index, this.source);
    if (!header) return undefined;
    this.index++;
    return new GzipMember(this.reader, header, index, this.source, name);
  }

  destroy(): void {
    this.reader.destroy();
  }
}

/** The members of a gzip stream, one after another. `source` names the input in messages. */
export function gzipMembers(input: Readable, source: string): MemberReader {
  return new GzipMemberReader(input, source);
}
