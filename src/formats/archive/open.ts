// Opening archives: a file or a stream (stdin, a pipe from ssh) as an uncompressed tar stream,
// the compression told by its first bytes; and reading only an archive's first entry (its
// manifest) without decompressing the deltas.
import { createReadStream } from 'node:fs';
import { pipeline, type Readable } from 'node:stream';
import zlib from 'node:zlib';
import { readArchives, type Manifest } from './archive.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import { peekStream, sniff, describeKind } from '../input.js';

/**
 * Opens an archive file as an uncompressed tar stream: gzip (what sbk-pack stores) is
 * decompressed, a plain tar is passed through, anything else is refused by its first bytes.
 * Destroying the returned stream closes the file.
 */
export async function openArchiveFile(file: string): Promise<Readable> {
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
  return openArchiveStream(input, file);
}

/** The same for a stream (stdin): gzip or plain tar, told apart by the first bytes. */
export async function openArchiveStream(input: Readable, source: string): Promise<Readable> {
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
  if (kind !== 'gzip') {
    stream.destroy();
    throw new SbkError(
      kind === 'empty' ? `${source} is empty` : `${source} is not an sbk archive (it holds ${describeKind[kind]})`,
      ExitCode.badInput,
    );
  }
  // Node's gunzip reads concatenated gzip members (`cat a.tar.gz b.tar.gz`) as one stream.
  const gunzip = zlib.createGunzip({ chunkSize: 256 * 1024 });
  // Errors of either end reach the gunzip stream, which readArchives listens to; destroying
  // the gunzip stream closes the input.
  pipeline(stream, gunzip, () => {});
  return gunzip;
}

/**
 * A read error as a one-line user error. Errors met while an entry's body is consumed do not
 * pass through readArchives' own mapping, so gzip and tar faults are named here too.
 */
export function readError(err: unknown, source: string): unknown {
  if (err instanceof SbkError || !(err instanceof Error)) return err;
  const code = (err as NodeJS.ErrnoException).code ?? '';
  const msg = err.message;
  if (code.startsWith('Z_') || /incorrect header check|invalid (block type|stored block|distance|code)|unexpected end of file/i.test(msg))
    return new SbkError(`${source}: the gzip data is corrupt or cut short (${msg})`, ExitCode.corrupt, { cause: err });
  if (/unexpected end|premature close|invalid tar header|checksum/i.test(msg))
    return new SbkError(`${source}: the tar stream is corrupt or cut short (${msg})`, ExitCode.corrupt, { cause: err });
  return err;
}

// ---------------------------------------------------------------------------------------------
// The store

/**
 * Reads an archive's first tar entry only: the manifest of an sbk archive, or the first file
 * of an original Subutai archive. Decompresses a few KiB, never the deltas.
 */
export async function readArchiveHead(file: string): Promise<{ manifest?: Manifest; legacy: boolean }> {
  const tarStream = await openArchiveFile(file);
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
