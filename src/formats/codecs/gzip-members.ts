// One gzip member (RFC 1952) of a stream of concatenated members, as `sbk-pack -o -` writes them
// (one member per archive), for `sbk-pack --store` and streams on sbk-unpack's stdin (members.ts
// walks the stream, codec by codec): the member's bytes are handed out exactly as read,
// to be stored as they are, while a raw inflater (one per member: zlib stops at the end of the
// deflate data and says how much input it used, which is how the member's end is found) gives
// its content, and the member's trailer (CRC-32, length) is checked against that content.
import { Transform } from 'node:stream';
import zlib from 'node:zlib';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { CompressedMember } from './codec.js';
import type { ByteReader } from './byte-reader.js';
import { crc32 } from './crc32.js';

const GZ_FHCRC = 2;
const GZ_FEXTRA = 4;
const GZ_FNAME = 8;
const GZ_FCOMMENT = 16;

/** Reads one gzip member header (members.ts saw its magic bytes). */
async function readGzipHeader(r: ByteReader, index: number, source: string): Promise<Buffer> {
  const at = `gzip member ${index + 1} (byte ${r.offset})`;
  const cut = () => new SbkError(`${source}: the gzip stream is cut short in the header of ${at}`, ExitCode.corrupt);
  const fixed = await r.read(10);
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

/** The gzip member that starts at the reader's position. `source` names the input in messages. */
export async function gzipMember(reader: ByteReader, index: number, source: string, name: () => string | undefined): Promise<CompressedMember> {
  const header = await readGzipHeader(reader, index, source);
  return new GzipMember(reader, header, index, source, name);
}
