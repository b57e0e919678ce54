// Where archives are kept, seen the same way by the stages that store, plan, prune and read
// them: a directory (`--store DIR`, `--dir DIR`) or an S3-compatible bucket
// (`s3://BUCKET/PREFIX`, system/s3.ts, loaded only when such a location is named, so that local
// runs and --help never load the S3 client). Files are named by their base names in the store.
import { readdir, stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { SbkError, ExitCode } from '../core/errors.js';
import { openRawFile } from '../formats/archive/open.js';
import { endStream, writeChunk } from '../core/streams.js';
import type { Log } from '../core/log.js';
import { createAtomicFile, fsyncDir, removeStaleTemps, WRITE_BEHIND_BYTES, type AtomicFile } from './atomic.js';
import { backupLockFile, withLock } from './lock.js';

/** How to reach an S3-compatible server (options over the environment; see man sbk(7), ENVIRONMENT). */
export interface S3Options {
  /** --s3-endpoint: the server's URL (path-style addressing). */
  endpoint?: string;
  /** --s3-ca: a PEM file of the CA that signed the server's certificate. */
  ca?: string;
}

export interface StoredObject {
  /** Base name in the store. */
  file: string;
  size: number;
}

/**
 * Bytes being written under a name that appears only at commit: a temporary file linked into
 * place (DIR), or a multipart upload completed (S3). Never replaces what is there.
 */
export interface StoreWriter {
  write(chunk: Buffer): Promise<void>;
  /**
   * The final name, when it was learnt only while writing (an archive, named by its manifest);
   * fails with exit 6 when the name is taken. A writer opened with a name needs no call.
   */
  name(file: string): Promise<void>;
  commit(): Promise<void>;
  /** Removes what was written (safe after commit: does nothing then). */
  abort(): Promise<void>;
}

export interface ArchiveStore {
  /** The store as the user named it (an absolute DIR, or `s3://BUCKET/PREFIX`), for messages. */
  readonly location: string;
  /** Where a file of the store is: a path, or an `s3://` URL. */
  locationOf(file: string): string;
  /** The files directly in the store (not in sub-directories), with their sizes. */
  list(): Promise<StoredObject[]>;
  /** The size of a file, undefined when there is none. */
  sizeOf(file: string): Promise<number | undefined>;
  /** The file's bytes from the start, fetched as they are read (an S3 store asks for ranges, never the whole object). */
  openHead(file: string): Promise<Readable>;
  /** The file's bytes, streamed. */
  openRead(file: string): Promise<Readable>;
  /** Removes a file (one already gone is fine). */
  remove(file: string): Promise<void>;
  /** After removals: makes them durable (a directory's fsync). */
  settle(): Promise<void>;
  /**
   * A writer of a new file. Unnamed (an archive: `name()` comes later) it never replaces a file;
   * named (a changelog sidecar, committed after its archive) it replaces a stale one.
   */
  writer(file: string | undefined, opts: { suffix: string; log: Log }): Promise<StoreWriter>;
  /** Removes what killed runs left (temporary files, unfinished uploads). */
  sweep(log: Log): Promise<void>;
  /**
   * Runs `fn` while no other sbk stores into or prunes this store for `container` (a directory's
   * lock file). An S3 store has no lock: see man sbk(7), OBJECT STORAGE.
   */
  exclusive<T>(container: string, opts: { holder: string; wait?: number; signal?: AbortSignal }, fn: () => Promise<T>): Promise<T>;
}

export const isS3Url = (location: string) => location.startsWith('s3://');

/** The store a location names: `s3://BUCKET/PREFIX` or a directory. */
export async function openStore(location: string, s3: S3Options = {}): Promise<ArchiveStore> {
  if (isS3Url(location)) {
    const { openS3Store } = await import('./s3.js');
    return openS3Store(location, s3);
  }
  return new DirStore(path.resolve(location));
}

class DirStore implements ArchiveStore {
  constructor(readonly location: string) {}

  locationOf(file: string): string {
    return path.join(this.location, file);
  }

  async list(): Promise<StoredObject[]> {
    let names: string[];
    try {
      names = await readdir(this.location);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new SbkError(`backup directory ${this.location} does not exist`, ExitCode.notFound);
      if (code === 'ENOTDIR') throw new SbkError(`${this.location} is not a directory`, ExitCode.badInput);
      throw err;
    }
    const out: StoredObject[] = [];
    for (const file of names) {
      const st = await stat(this.locationOf(file)).catch(() => undefined);
      if (st?.isFile()) out.push({ file, size: st.size });
    }
    return out;
  }

  async sizeOf(file: string): Promise<number | undefined> {
    const st = await stat(this.locationOf(file)).catch(() => undefined);
    return st?.isFile() ? st.size : undefined;
  }

  openHead(file: string): Promise<Readable> {
    return openRawFile(this.locationOf(file));
  }

  openRead(file: string): Promise<Readable> {
    return openRawFile(this.locationOf(file));
  }

  async remove(file: string): Promise<void> {
    await unlink(this.locationOf(file)).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err;
    });
  }

  settle(): Promise<void> {
    return fsyncDir(this.location);
  }

  async writer(file: string | undefined, opts: { suffix: string }): Promise<StoreWriter> {
    const f: AtomicFile = await createAtomicFile(this.locationOf(file ?? `incoming${opts.suffix}`), 0o644, {
      writeBehind: file ? 0 : WRITE_BEHIND_BYTES,
    });
    let finalPath = f.finalPath;
    // An archive (named by name()) never replaces one; a sidecar replaces a stale one.
    let noClobber = false;
    return {
      write: (chunk) => writeChunk(f.stream, chunk),
      name: async (name) => {
        finalPath = this.locationOf(name);
        noClobber = true;
        // Fails before the work when the name is taken; the link at commit checks again.
        if (await stat(finalPath).then(() => true, () => false))
          throw new SbkError(`${finalPath} already exists; not overwriting it`, ExitCode.conflict);
      },
      commit: async () => {
        await endStream(f.stream);
        await f.commit({ noClobber, as: finalPath });
      },
      abort: () => f.abort(),
    };
  }

  async sweep(log: Log): Promise<void> {
    // The directory may be shared by hosts whose pids mean nothing here: only files an hour old go.
    for (const n of await removeStaleTemps(this.location, { minAgeMs: 3600_000 }))
      log.info(`removing ${n}, left by a transfer that did not finish`);
  }

  exclusive<T>(container: string, opts: { holder: string; wait?: number; signal?: AbortSignal }, fn: () => Promise<T>): Promise<T> {
    return withLock(backupLockFile(this.location, container), opts, fn);
  }
}
