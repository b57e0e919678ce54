// Opening archives: a file or a stream (stdin, a pipe from ssh) as an uncompressed tar stream,
// the compression told by its first bytes (a stream's at each archive: gzip and zstd archives
// may follow each other); and reading only an archive's first entry (its
// manifest) without decompressing the deltas.
import { createReadStream } from 'node:fs';
import { pipeline, type Readable } from 'node:stream';
import { readArchives } from './reader.js';
import type { Manifest } from './manifest.js';
import { streamFault } from './faults.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import { codecForMagic } from '../codecs/codec.js';
import { decompressMembers } from '../codecs/members.js';
import { peekStream, sniff, describeKind } from '../input.js';

/**
 * Opens an archive file as an uncompressed tar stream: a compressed one (what sbk-pack stores)
 * is decompressed by the codec its first bytes name, a plain tar is passed through, anything else is refused by its first bytes.
 * Destroying the returned stream closes the file.
 */
export async function openArchiveFile(file: string): Promise<Readable> {
  return openArchive(await openRawFile(file), file, false);
}

/** An archive file's bytes as stored, with the file's own problems (missing, a directory) as one-line errors. */
export async function openRawFile(file: string): Promise<Readable> {
  const input = createReadStream(file, { highWaterMark: 1024 * 1024 });
  try {
    await new Promise<void>((resolve, reject) => {
      input.once('open', () => resolve());
      input.once('error', reject);
    });
  } catch (err) {
    input.destroy();
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new SbkError(`${file}: no such archive`, ExitCode.notFound);
    if (code === 'EISDIR') throw new SbkError(`${file} is a directory, not an archive`, ExitCode.badInput);
    throw new SbkError(`${file}: cannot open (${(err as Error).message})`, ExitCode.failure, { cause: err });
  }
  return input;
}

/**
 * The same for a stream (stdin): compressed or plain tar, told apart by the first bytes; a
 * compressed stream may hold archives of different codecs, one after another.
 */
export function openArchiveStream(input: Readable, source: string): Promise<Readable> {
  return openArchive(input, source, true);
}

async function openArchive(input: Readable, source: string, mixed: boolean): Promise<Readable> {
  let head: Buffer;
  let stream: Readable;
  try {
    ({ head, stream } = await peekStream(input, 512));
  } catch (err) {
    input.destroy();
    throw new SbkError(`${source}: cannot read (${(err as Error).message})`, ExitCode.failure, { cause: err });
  }
  const kind = sniff(head);
  if (kind === 'tar') return stream;
  const codec = codecForMagic(head);
  if (!codec) {
    stream.destroy();
    throw new SbkError(
      kind === 'empty' ? `${source} is empty` : `${source} is not an sbk archive (it holds ${describeKind[kind]})`,
      ExitCode.badInput,
    );
  }
  // A stream is read member by member, each by its own codec. A file is one archive (what
  // sbk-pack stores): its codec's decompressor reads it in one go (it also reads concatenated
  // members of its own format, `cat a.tar.gz b.tar.gz > c.tar.gz`).
  if (mixed) return decompressMembers(stream, source);
  const plain = codec.decompress();
  // Errors of either end reach the decompressor, which readArchives listens to; destroying it
  // closes the input.
  pipeline(stream, plain, () => {});
  return plain;
}

/**
 * A read error as a one-line user error. Errors met while an entry's body is consumed do not
 * pass through readArchives' own mapping, so compression and tar faults are named here too.
 */
export function readError(err: unknown, source: string): unknown {
  if (err instanceof SbkError || !(err instanceof Error)) return err;
  const fault = streamFault(err);
  if (fault?.kind === 'codec')
    return new SbkError(`${source}: the ${fault.codec} data is corrupt or cut short (${err.message})`, ExitCode.corrupt, { cause: err });
  if (fault?.kind === 'tar')
    return new SbkError(`${source}: the tar stream is corrupt or cut short (${err.message})`, ExitCode.corrupt, { cause: err });
  return err;
}

/**
 * Reads an archive's first tar entry only: the manifest of an sbk archive, or the first file
 * of an original Subutai archive. Decompresses a few KiB, never the deltas.
 */
export async function readArchiveHead(file: string): Promise<{ manifest?: Manifest; legacy: boolean }> {
  return readArchiveHeadFrom(await openRawFile(file), file);
}

/** The same from an archive's stored bytes (a file, the ranged reads of an object), read only as far as the first entry. */
export async function readArchiveHeadFrom(raw: Readable, file: string): Promise<{ manifest?: Manifest; legacy: boolean }> {
  const tarStream = await openArchiveStream(raw, file);
  try {
    for await (const entry of readArchives(tarStream, { legacy: true, source: file })) {
      if (entry.role === 'manifest') return { manifest: entry.manifest, legacy: false };
      return { legacy: true };
    }
    throw new SbkError(`${file}: empty archive`, ExitCode.corrupt);
  } catch (err) {
    throw readError(err, file);
  } finally {
    tarStream.destroy();
  }
}
