// Atomic file writes: data goes to a temporary name in the same directory, is fsynced, then
// renamed over the final name, and the directory is fsynced. A killed run leaves at most a
// `.<name>.tmp-<pid>-<n>` file, never a half-written file under the final name.
import { open, readdir, rename, rm, link, unlink, stat, lstat } from 'node:fs/promises';
import { constants } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { FileHandle } from 'node:fs/promises';
import { SbkError, ExitCode } from '../core/errors.js';
import { endStream } from '../core/streams.js';
import { TEMP_FILE_RE, tempFileName } from '../core/layout.js';
import { isProcessAlive } from './proc.js';

let counter = 0;

export function tempNameFor(finalPath: string): string {
  return path.join(path.dirname(finalPath), tempFileName(path.basename(finalPath), counter++));
}

/** True for names `tempNameFor` makes (so clean-up can find leftovers of killed runs). */
export function isTempName(name: string): boolean {
  return TEMP_FILE_RE.test(name);
}

/** Removes temporary files in `dir` left by runs that were killed (their process is gone). */
export async function removeStaleTemps(dir: string, opts: { minAgeMs?: number } = {}): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const m = TEMP_FILE_RE.exec(name);
    if (!m || isProcessAlive(Number(m[1]))) continue;
    if (opts.minAgeMs) {
      const st = await stat(path.join(dir, name)).catch(() => undefined);
      if (!st || Date.now() - st.mtimeMs < opts.minAgeMs) continue;
    }
    await rm(path.join(dir, name), { force: true });
    removed.push(name);
  }
  return removed;
}


/** True if something (even a dangling symlink) is at `p`; false only for ENOENT, other errors thrown. */
export async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** write(2) may take fewer bytes than it was given (a disk filling up): write the rest too. */
async function writeFully(fh: FileHandle, buf: Buffer): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off);
    if (!(bytesWritten > 0)) throw Object.assign(new Error('write made no progress'), { code: 'EIO' });
    off += bytesWritten;
  }
}

/**
 * Starts an fdatasync of a file being written each time `every` more bytes have gone into it (one
 * at a time, in the background), so that the kernel writes a big file back while it is being
 * made and the fsync before the rename has little left to do: the wait at the end of a backup
 * stays short, and no gigabyte of dirty pages piles up. An error is kept for `settle`.
 */
export class WriteBehind {
  private since = 0;
  private pending: Promise<void> | undefined;
  private error: unknown;
  constructor(
    private readonly fh: FileHandle,
    private readonly every: number,
  ) {}

  wrote(n: number): void {
    this.since += n;
    if (this.every <= 0 || this.since < this.every || this.pending) return;
    this.since = 0;
    this.pending = this.fh
      .datasync()
      .catch((err: unknown) => {
        this.error ??= err;
      })
      .finally(() => {
        this.pending = undefined;
      });
  }

  /** Waits for a flush in flight (before fsync or close); throws the error of a failed one. */
  async settle(): Promise<void> {
    await this.pending;
    if (this.error) throw this.error;
  }
}

/** How often a big file (an archive) is flushed while it is written; see WriteBehind. */
export const WRITE_BEHIND_BYTES = 16 * 1024 * 1024;

export interface AtomicFile {
  readonly tempPath: string;
  readonly finalPath: string;
  /** A writable stream into the temporary file (backpressure honoured). */
  readonly stream: Writable;
  /**
   * fsync, then rename into place. `noClobber`: fail if the final name exists. `as`: the final
   * name when it was learnt only while writing (a received archive, named by its manifest);
   * it must be in the same directory.
   */
  commit(opts?: { noClobber?: boolean; as?: string }): Promise<void>;
  /** Removes the temporary file (safe to call after commit: it does nothing then). */
  abort(): Promise<void>;
}

/** Opens a temporary file next to `finalPath`; nothing appears under `finalPath` before commit. */
export async function createAtomicFile(finalPath: string, mode = 0o644, opts: { writeBehind?: number } = {}): Promise<AtomicFile> {
  const tempPath = tempNameFor(finalPath);
  const fh: FileHandle = await open(tempPath, 'wx', mode);
  const behind = new WriteBehind(fh, opts.writeBehind ?? 0);
  let closed = false;
  let done = false;
  const stream = new Writable({
    highWaterMark: 1024 * 1024,
    writev(chunks, cb) {
      const bufs = chunks.map((c) => c.chunk as Buffer);
      const total = bufs.reduce((n, b) => n + b.length, 0);
      fh.writev(bufs)
        .then(({ bytesWritten }) => (bytesWritten < total ? writeFully(fh, Buffer.concat(bufs).subarray(bytesWritten)) : undefined))
        .then(() => {
          behind.wrote(total);
          cb();
        }, cb);
    },
    write(chunk: Buffer, _enc, cb) {
      writeFully(fh, chunk).then(() => {
        behind.wrote(chunk.length);
        cb();
      }, cb);
    },
  });
  // A failed write (a full disk) is reported to the writer by write()'s and end()'s callbacks,
  // by writeChunk (core/streams.ts), or by the pipeline writing into the stream; never as an unheard 'error' event
  // that would crash the process before abort() could remove the temporary file.
  stream.on('error', () => {});
  const close = async () => {
    if (!closed) {
      closed = true;
      await behind.settle().catch(() => {}); // never close under a flush in flight
      await fh.close();
    }
  };
  return {
    tempPath,
    finalPath,
    stream,
    async commit(opts = {}) {
      const target = opts.as ?? finalPath;
      await behind.settle();
      await fh.sync();
      await close();
      if (opts.noClobber) {
        // link() fails with EEXIST instead of replacing: an existing archive is never overwritten.
        try {
          await link(tempPath, target);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'EEXIST')
            throw new SbkError(`${target} already exists; not overwriting it`, ExitCode.conflict);
          throw err;
        }
        await unlink(tempPath);
      } else {
        await rename(tempPath, target);
      }
      done = true;
      await fsyncDir(path.dirname(target));
    },
    async abort() {
      if (done) return;
      stream.destroy();
      await close().catch(() => {});
      await rm(tempPath, { force: true });
    },
  };
}

/** Writes a whole small file atomically. */
export async function writeFileAtomic(finalPath: string, data: string | Buffer, opts: { noClobber?: boolean; mode?: number } = {}) {
  const f = await createAtomicFile(finalPath, opts.mode);
  try {
    f.stream.write(data);
    await endStream(f.stream); // reports a failed write: never commit after one
    await f.commit({ noClobber: opts.noClobber });
  } catch (err) {
    await f.abort();
    throw err;
  }
}
