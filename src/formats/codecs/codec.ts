// The compression formats sbk reads and writes, behind one interface, and their registry. A
// stage never names a format's library: it asks for a codec by name (sbk-pack's compressor) or by
// the first bytes of its input (opening an archive, sniffing stdin). Adding a format is one module
// exporting a Codec plus its line in `codecs` below, its name, suffix and levels in names.ts, and
// its suffix in core/layout.ts's list.
import type { Duplex, Readable } from 'node:stream';
import type { ByteReader } from './byte-reader.js';
import { gzipCodec } from './gzip.js';
import { zstdCodec } from './zstd.js';
import { codecNameForMagic } from './names.js';

export interface CompressOptions {
  /** Compression level (the codec's own scale, its `levels`). */
  level?: number;
  /** Worker threads, for codecs that compress in parallel. */
  threads?: number;
}

/** A compressor's counters, for progress (read them; callers never count per chunk). */
export interface CodecCounters {
  readonly bytesIn: number;
  readonly bytesOut: number;
}

/**
 * One compressed member of a stream of concatenated members (one per archive), as `sbk-pack
 * --store` receives it: the member's own bytes are kept as they come, its content is read and
 * verified on the way.
 */
export interface CompressedMember {
  /** The member's decompressed bytes. */
  readonly plain: Readable;
  /**
   * The member's bytes exactly as read (header, compressed data, trailer), to be stored as they
   * come; throws an SbkError when the stream is cut short or corrupt.
   */
  readonly raw: AsyncIterable<Buffer>;
  /** Once `raw` and `plain` were read whole: throws unless the member's own check (gzip: CRC-32 and length) passes. */
  check(): void;
  /** Stops decompressing; with an error, the reader of `plain` hears of it. */
  destroy(err?: Error): void;
}

export interface MemberReader {
  /**
   * The next member (of whichever codec its magic bytes name), or undefined at the end of the
   * input. `name()` gives the name of the member's archive once it is known, for messages.
   */
  next(name: () => string | undefined): Promise<(CompressedMember & { codec: Codec }) | undefined>;
  /** Stops reading the input. */
  destroy(): void;
}

export interface Codec {
  /** As given to sbk-pack and told in messages ('gzip'). */
  readonly name: string;
  /** The suffix of a compressed archive's file name ('.tar.gz'). */
  readonly suffix: string;
  /** The first bytes of every compressed stream of this format. */
  readonly magic: Buffer;
  /** The levels sbk-pack --level takes, and the one it uses unless told. */
  readonly levels: { readonly min: number; readonly max: number; readonly default: number };
  /** How input of this format is described in messages (see formats/input.ts). */
  readonly description: string;
  /** A Duplex: bytes in, one compressed member out. */
  compress(opts: CompressOptions): Duplex & CodecCounters;
  /** A Duplex: compressed bytes in (any number of concatenated members), the content out. */
  decompress(): Duplex;
  /** True for the errors of a corrupt or cut compressed stream (as opposed to I/O errors). */
  isDataError(err: Error): boolean;
  /**
   * The member that starts at the reader's position (its magic bytes are there), for reading a
   * stream member by member (members.ts). `index` and `name()` are for messages.
   */
  member(reader: ByteReader, index: number, source: string, name: () => string | undefined): Promise<CompressedMember>;
}

/** Every codec, the default (what sbk-pack writes unless told otherwise) first. */
export const codecs = [gzipCodec, zstdCodec] as const satisfies readonly Codec[];

export type CodecName = (typeof codecs)[number]['name'];

export const DEFAULT_CODEC: Codec = gzipCodec;

export function codecByName(name: string): Codec | undefined {
  return codecs.find((c) => c.name === name);
}

/** The codec whose magic bytes `head` starts with, if any. */
export function codecForMagic(head: Buffer): Codec | undefined {
  const name = codecNameForMagic(head);
  return name && codecByName(name);
}

/** The codec a read error belongs to, when it is one of a corrupt or cut compressed stream. */
export function codecOfDataError(err: Error): Codec | undefined {
  return codecs.find((c) => c.isDataError(err));
}
