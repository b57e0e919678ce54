// A stream of compressed members one after another, each of any codec (`cat a.tar.gz b.tar.zst`,
// the output of several `sbk-pack -o -` runs): each member's codec is told by its magic bytes at
// the point where the one before ended. `sbk-pack --store` keeps each member's bytes as they come;
// sbk-unpack reads the content of them all as one stream.
import { PassThrough, type Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { SbkError, ExitCode } from '../../core/errors.js';
import { ByteReader } from './byte-reader.js';
import { codecs, codecForMagic, codecOfDataError, type Codec, type CompressedMember, type MemberReader } from './codec.js';

const MAGIC_BYTES = Math.max(...codecs.map((c) => c.magic.length));
const NAMES = codecs.map((c) => c.name).join(' or ');

class Members implements MemberReader {
  private readonly reader: ByteReader;
  private index = 0;
  constructor(
    input: Readable,
    private readonly source: string,
  ) {
    this.reader = new ByteReader(input);
  }

  async next(name: () => string | undefined): Promise<(CompressedMember & { codec: Codec }) | undefined> {
    const index = this.index;
    const head = await this.reader.peek(MAGIC_BYTES);
    if (head.length === 0) return undefined;
    const codec = codecForMagic(head);
    if (!codec)
      throw new SbkError(
        index === 0
          ? `${this.source}: not ${NAMES} data`
          : `${this.source}: ${head.length < MAGIC_BYTES ? 'a few' : 'more'} bytes after archive ${index} that are not a ${NAMES} member (trailing garbage)`,
        index === 0 ? ExitCode.badInput : ExitCode.corrupt,
      );
    const member = await codec.member(this.reader, index, this.source, name);
    this.index++;
    return Object.assign(member, { codec });
  }

  destroy(): void {
    this.reader.destroy();
  }
}

/** The members of a compressed stream, one after another. `source` names the input in messages. */
export function compressedMembers(input: Readable, source: string): MemberReader {
  return new Members(input, source);
}

/** A member's decompressor failing (a corrupt member) as a one-line SbkError; other errors (I/O) pass. */
function asDataError(err: unknown, source: string, index: number): unknown {
  if (err instanceof SbkError || !(err instanceof Error)) return err;
  const codec = codecOfDataError(err);
  if (!codec) return err;
  const msg = err.message.replace(/[\x00-\x1f\x7f]+/g, ' ');
  return new SbkError(`${source}: the ${codec.name} data of archive ${index + 1} is corrupt (${msg})`, ExitCode.corrupt, { cause: err });
}

/** Reads a member whole: its bytes (dropped here) drive the decompression of its content. */
async function readWhole(member: CompressedMember): Promise<void> {
  for await (const _ of member.raw) void _;
}

/**
 * The content of every member of a compressed stream, one after another, as one stream; each
 * member's own check (gzip CRC, zstd checksum) passes before the next one's content follows.
 * Destroying the returned stream stops the reading (and a zstd child).
 */
export function decompressMembers(input: Readable, source: string): Readable {
  const out = new PassThrough({ highWaterMark: 256 * 1024 });
  const members = compressedMembers(input, source);
  let current: CompressedMember | undefined;
  let stopped = false;
  out.on('close', () => {
    stopped = true;
    current?.destroy();
    members.destroy();
  });
  (async () => {
    for (let index = 0; ; index++) {
      const m = (current = await members.next(() => undefined));
      if (!m || stopped) break;
      m.plain.pipe(out, { end: false });
      try {
        await Promise.all([readWhole(m), finished(m.plain, { writable: false })]);
      } catch (err) {
        m.destroy(err as Error);
        throw asDataError(err, source, index);
      }
      m.check();
    }
    current = undefined;
    out.end();
  })().catch((err: Error) => {
    members.destroy();
    out.destroy(err);
  });
  return out;
}
