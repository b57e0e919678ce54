// Atomic files (src/system/atomic.ts): temporary names, a file that appears whole under its
// final name or not at all (commit, abort, noClobber), writeFileAtomic, fsyncDir, and the
// write-behind flush of big files.
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { describe, it, expect, beforeEach, afterEach, vi } from 'vitest';
import { createAtomicFile, writeFileAtomic, tempNameFor, isTempName, fsyncDir, WriteBehind } from '../../src/system/atomic.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';
import { until } from '../helpers/wait.js';

// Faults the file system cannot be made to give on demand without root: short writes (what
// write(2) returns when the disk fills part way) and write errors (ENOSPC). Off unless a test
// turns them on; they apply to files opened for the atomic writes only.
const faults = vi.hoisted(() => ({ short: false, failAfter: -1 }));
vi.mock('node:fs/promises', async (importOriginal) => {
  const orig = await importOriginal<typeof import('node:fs/promises')>();
  const open = async (...args: Parameters<typeof orig.open>) => {
    const fh = await orig.open(...args);
    if (!String(args[0]).includes('.tmp-')) return fh;
    let written = 0;
    const check = (n: number) => {
      if (faults.failAfter >= 0 && written + n > faults.failAfter)
        throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' });
    };
    const write = fh.write.bind(fh) as (b: Buffer, o?: number, l?: number, p?: number | null) => Promise<{ bytesWritten: number; buffer: Buffer }>;
    const writev = fh.writev.bind(fh);
    Object.assign(fh, {
      async write(buf: Buffer, offset?: number, length?: number, position?: number | null) {
        const off = offset ?? 0;
        let len = length ?? buf.length - off;
        if (faults.short && len > 1) len = Math.ceil(len / 2);
        check(len);
        const r = await write(buf, off, len, position ?? null);
        written += r.bytesWritten;
        return r;
      },
      async writev(bufs: Buffer[], position?: number | null) {
        if (faults.short && bufs.length > 0) {
          // The kernel took the first half of the first buffer only.
          const first = bufs[0]!;
          const part = first.subarray(0, Math.ceil(first.length / 2));
          check(part.length);
          const r = await write(part, 0, part.length, position ?? null);
          written += r.bytesWritten;
          return { bytesWritten: r.bytesWritten, buffers: bufs };
        }
        check(bufs.reduce((n, b) => n + b.length, 0));
        const r = await writev(bufs, position ?? undefined);
        written += r.bytesWritten;
        return r;
      },
    });
    return fh;
  };
  return { ...orig, default: { ...orig, open }, open };
});

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'sbk-atomic-'));
  faults.short = false;
  faults.failAfter = -1;
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const ls = async () => (await readdir(dir)).sort();

function data(n: number, seed = 3): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

async function writeAll(f: { stream: NodeJS.WritableStream }, chunks: Buffer[]): Promise<void> {
  await pipeline(Readable.from(chunks), f.stream as never);
}

describe('temp names', () => {
  it('are hidden, next to the final name, unique, and recognised by isTempName', () => {
    const final = '/b/backups/c1_1477297700_Full.tar.gz';
    const a = tempNameFor(final);
    const b = tempNameFor(final);
    expect(a).not.toBe(b);
    for (const t of [a, b]) {
      expect(path.dirname(t)).toBe('/b/backups');
      expect(path.basename(t)).toMatch(new RegExp(`^\\.c1_1477297700_Full\\.tar\\.gz\\.tmp-${process.pid}-\\d+$`));
      expect(isTempName(path.basename(t))).toBe(true);
    }
  });

  it.each([
    'c1_1477297700_Full.tar.gz',
    '.sbk-confirmed',
    '.c1_1.tar.gz.tmp',
    '.c1_1.tar.gz.tmp-12',
    '.c1_1.tar.gz.tmp-x-1',
    'c1_1.tar.gz.tmp-1-2',
    '.tmp-1-2',
    '.c1_1.tar.gz.tmp-1-2.bak',
  ])('isTempName(%j) is false', (name) => {
    expect(isTempName(name)).toBe(false);
  });
});

describe('createAtomicFile', () => {
  it('nothing under the final name before commit; the file there after it, with all its bytes', async () => {
    const final = path.join(dir, 'c1_1477297700_Full.tar.gz');
    const f = await createAtomicFile(final);
    expect(f.finalPath).toBe(final);
    expect(path.dirname(f.tempPath)).toBe(dir);
    expect(isTempName(path.basename(f.tempPath))).toBe(true);
    const body = data(3 * 1024 * 1024 + 17);
    await writeAll(f, [body.subarray(0, 1000), body.subarray(1000, 2_000_000), body.subarray(2_000_000)]);
    expect(await ls()).toEqual([path.basename(f.tempPath)]);
    await f.commit();
    expect(await ls()).toEqual(['c1_1477297700_Full.tar.gz']);
    expect((await readFile(final)).equals(body)).toBe(true);
    // abort after commit does nothing.
    await f.abort();
    expect(await ls()).toEqual(['c1_1477297700_Full.tar.gz']);
  });

  it('an empty file', async () => {
    const final = path.join(dir, 'empty');
    const f = await createAtomicFile(final);
    await writeAll(f, []);
    await f.commit({ noClobber: true });
    expect((await stat(final)).size).toBe(0);
    expect(await ls()).toEqual(['empty']);
  });

  it('sets the mode asked for (within the umask)', async () => {
    const final = path.join(dir, 'secret');
    const f = await createAtomicFile(final, 0o600);
    await writeAll(f, [Buffer.from('x')]);
    await f.commit();
    expect((await stat(final)).mode & 0o777).toBe(0o600);
  });

  it('abort leaves nothing, before or after writing, and may be called twice', async () => {
    const a = await createAtomicFile(path.join(dir, 'a'));
    await a.abort();
    const b = await createAtomicFile(path.join(dir, 'b'));
    b.stream.write(data(100_000));
    await b.abort();
    await b.abort();
    expect(await ls()).toEqual([]);
  });

  it('abort in the middle of a stream that is being written', async () => {
    const f = await createAtomicFile(path.join(dir, 'mid'));
    let yielded = 0;
    const src = Readable.from((function* () {
      for (let i = 0; i < 100; i++, yielded++) yield data(64 * 1024, i);
    })());
    const piping = pipeline(src, f.stream).catch((e: unknown) => e);
    await until(() => yielded >= 2, 'the stream to be under way', 5000, 1);
    await f.abort();
    await piping;
    expect(await ls()).toEqual([]);
  });

  it('noClobber refuses an existing file with a conflict and leaves it untouched', async () => {
    const final = path.join(dir, 'c1_1477297700.tar.gz');
    await writeFile(final, 'the archive that was there');
    const f = await createAtomicFile(final);
    await writeAll(f, [Buffer.from('a new archive')]);
    const err = await f.commit({ noClobber: true }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SbkError);
    expect((err as SbkError).exitCode).toBe(ExitCode.conflict);
    expect((err as SbkError).message).toBe(`${final} already exists; not overwriting it`);
    expect(await readFile(final, 'utf8')).toBe('the archive that was there');
    // The caller aborts: the temp file goes, the existing file stays.
    await f.abort();
    expect(await ls()).toEqual(['c1_1477297700.tar.gz']);
    expect(await readFile(final, 'utf8')).toBe('the archive that was there');
  });

  it('noClobber refuses a final name taken while the file was written (a race)', async () => {
    const final = path.join(dir, 'race');
    const f = await createAtomicFile(final);
    await writeAll(f, [Buffer.from('mine')]);
    const g = await createAtomicFile(final);
    await writeAll(g, [Buffer.from('theirs')]);
    await g.commit({ noClobber: true });
    await expect(f.commit({ noClobber: true })).rejects.toMatchObject({ exitCode: ExitCode.conflict });
    await f.abort();
    expect(await readFile(final, 'utf8')).toBe('theirs');
    expect(await ls()).toEqual(['race']);
  });

  it('without noClobber, commit replaces an existing file', async () => {
    const final = path.join(dir, 'marker');
    await writeFile(final, 'old');
    const f = await createAtomicFile(final);
    await writeAll(f, [Buffer.from('new')]);
    await f.commit();
    expect(await readFile(final, 'utf8')).toBe('new');
    expect(await ls()).toEqual(['marker']);
  });

  it('fails in a directory that does not exist, leaving nothing', async () => {
    await expect(createAtomicFile(path.join(dir, 'no', 'such', 'file'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await ls()).toEqual([]);
  });

  it('writes every byte even when the kernel takes only part of each write', async () => {
    faults.short = true;
    const final = path.join(dir, 'short');
    const f = await createAtomicFile(final);
    const body = data(2 * 1024 * 1024 + 3);
    const chunks: Buffer[] = [];
    for (let i = 0; i < body.length; i += 65_536) chunks.push(body.subarray(i, i + 65_536));
    await writeAll(f, chunks);
    await f.commit();
    faults.short = false;
    expect((await readFile(final)).equals(body)).toBe(true);
  });

  it('a write error (disk full) fails the stream; abort then leaves nothing', async () => {
    faults.failAfter = 100_000;
    const f = await createAtomicFile(path.join(dir, 'full'));
    const err = await writeAll(f, [data(60_000), data(60_000), data(60_000)]).catch((e: unknown) => e);
    expect((err as NodeJS.ErrnoException).code).toBe('ENOSPC');
    await f.abort();
    expect(await ls()).toEqual([]);
  });
});

describe('writeFileAtomic', () => {
  it('writes a small file', async () => {
    const final = path.join(dir, '.sbk-confirmed');
    await writeFileAtomic(final, '{"sbk":"confirmation"}\n');
    expect(await readFile(final, 'utf8')).toBe('{"sbk":"confirmation"}\n');
    await writeFileAtomic(final, Buffer.from('again'));
    expect(await readFile(final, 'utf8')).toBe('again');
    expect(await ls()).toEqual(['.sbk-confirmed']);
  });

  it('noClobber: a conflict, the old file untouched, no temp file left', async () => {
    const final = path.join(dir, 'x');
    await writeFile(final, 'old');
    await expect(writeFileAtomic(final, 'new', { noClobber: true })).rejects.toMatchObject({ exitCode: ExitCode.conflict });
    expect(await readFile(final, 'utf8')).toBe('old');
    expect(await ls()).toEqual(['x']);
  });

  it('mode', async () => {
    const final = path.join(dir, 'key');
    await writeFileAtomic(final, 'k', { mode: 0o600 });
    expect((await stat(final)).mode & 0o777).toBe(0o600);
  });

  it('a write error (disk full) rejects and leaves no file, never a partial one under the final name', async () => {
    faults.failAfter = 10;
    const final = path.join(dir, 'changelog.txt');
    const err = await writeFileAtomic(final, data(100_000)).catch((e: unknown) => e);
    expect((err as NodeJS.ErrnoException)?.code).toBe('ENOSPC');
    expect(await ls()).toEqual([]);
  });

  it('short writes still write the whole file', async () => {
    faults.short = true;
    const final = path.join(dir, 'whole');
    const body = data(300_000);
    await writeFileAtomic(final, body);
    faults.short = false;
    expect((await readFile(final)).equals(body)).toBe(true);
  });
});

describe('fsyncDir', () => {
  it('syncs a directory; a missing one is an error', async () => {
    await fsyncDir(dir);
    await expect(fsyncDir(path.join(dir, 'nope'))).rejects.toMatchObject({ code: 'ENOENT' });
  });
});

describe('WriteBehind (flushing a big file while it is written)', () => {
  /** A file handle whose datasync is counted and finishes when the test says so. */
  function fakeHandle() {
    const calls: Array<{ resolve: () => void; reject: (e: Error) => void }> = [];
    const fh = {
      datasync: () =>
        new Promise<void>((resolve, reject) => {
          calls.push({ resolve, reject });
        }),
    };
    return { fh: fh as unknown as import('node:fs/promises').FileHandle, calls };
  }
  const tick = () => new Promise((r) => setImmediate(r));

  it('flushes each time `every` more bytes were written, one flush at a time', async () => {
    const { fh, calls } = fakeHandle();
    const wb = new WriteBehind(fh, 1000);
    wb.wrote(600);
    expect(calls.length).toBe(0);
    wb.wrote(600);
    expect(calls.length).toBe(1);
    wb.wrote(5000); // a flush is in flight: no second one
    expect(calls.length).toBe(1);
    calls[0]!.resolve();
    await tick();
    wb.wrote(1000);
    expect(calls.length).toBe(2);
    calls[1]!.resolve();
    await wb.settle();
  });

  it('never flushes when `every` is 0 (small files)', () => {
    const { fh, calls } = fakeHandle();
    const wb = new WriteBehind(fh, 0);
    wb.wrote(1e9);
    expect(calls.length).toBe(0);
  });

  it('settle waits for the flush in flight and reports its error', async () => {
    const { fh, calls } = fakeHandle();
    const wb = new WriteBehind(fh, 10);
    wb.wrote(10);
    let settled = false;
    const s = wb.settle().then(
      () => (settled = true),
      (e: Error) => e,
    );
    await tick();
    expect(settled).toBe(false);
    calls[0]!.reject(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    expect(await s).toMatchObject({ code: 'EIO' });
  });

  it('createAtomicFile with writeBehind: the whole file arrives, flushed on the way', async () => {
    const final = path.join(dir, 'big.tar.gz');
    const f = await createAtomicFile(final, 0o644, { writeBehind: 64 * 1024 });
    const body = data(2 * 1024 * 1024 + 5);
    const chunks: Buffer[] = [];
    for (let o = 0; o < body.length; o += 100_000) chunks.push(body.subarray(o, o + 100_000));
    await writeAll(f, chunks);
    await f.commit({ noClobber: true });
    expect((await readFile(final)).equals(body)).toBe(true);
    expect(await ls()).toEqual(['big.tar.gz']);
  });

  it('createAtomicFile with writeBehind: abort while flushing leaves nothing', async () => {
    const final = path.join(dir, 'cut.tar.gz');
    const f = await createAtomicFile(final, 0o644, { writeBehind: 1 });
    f.stream.write(data(300_000));
    // The bytes reached the temporary file: its write-behind flush is under way.
    const written = async () => {
      for (const n of await readdir(dir)) if ((await stat(path.join(dir, n)).catch(() => undefined))?.size) return true;
      return false;
    };
    await until(written, 'the temporary file to be written', 5000, 1);
    await f.abort();
    expect(await ls()).toEqual([]);
  });
});
