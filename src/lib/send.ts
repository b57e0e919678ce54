// sbk-send's work: one archive (uncompressed tar, see archive.ts) per backup record, the
// volumes' `btrfs send` streams framed as they arrive, never spooled to disk.
import { readdir, readFile, lstat, open } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tar from 'tar-stream';
import { ArchiveWriter, DEFAULT_PART_SIZE, formatRootTime, manifestFromRecord, type VolumeRoot } from './archive.js';
import { requireSubvolume, send } from './btrfs.js';
import { SbkError, ExitCode } from './errors.js';
import type { BackupRecord } from './record.js';
import type { Log } from './log.js';

export interface MetaFile {
  rel: string;
  type: 'file' | 'directory';
  mode: number;
  mtime: Date;
  data?: Buffer;
}

/**
 * The container's own files (config, fstab, …): everything in its directory except the volumes
 * and hidden names, as the original tool's rsync took them. Symlinks and special files are
 * skipped (a restore must never follow a link out of the container).
 */
export async function collectMeta(containerDir: string, volumeNames: string[], log: Log): Promise<MetaFile[]> {
  const out: MetaFile[] = [];
  const walk = async (rel: string) => {
    const dir = path.join(containerDir, rel);
    const names = (await readdir(dir)).sort();
    for (const n of names) {
      if (n.startsWith('.')) continue;
      if (rel === '' && volumeNames.includes(n)) continue;
      const r = rel ? `${rel}/${n}` : n;
      const st = await lstat(path.join(containerDir, r));
      if (st.isDirectory()) {
        out.push({ rel: r, type: 'directory', mode: st.mode & 0o7777, mtime: st.mtime });
        await walk(r);
      } else if (st.isFile()) {
        out.push({ rel: r, type: 'file', mode: st.mode & 0o7777, mtime: st.mtime, data: await readFile(path.join(containerDir, r)) });
      } else {
        log.warn(`${r} in ${containerDir} is not a regular file or directory; not archived`);
      }
    }
  };
  await walk('');
  if (!out.some((m) => m.rel === 'config' && m.type === 'file'))
    throw new SbkError(`${containerDir}/config is missing: the container cannot be restored without it`, ExitCode.notFound);
  return out;
}

export interface SendOptions {
  log: Log;
  signal?: AbortSignal;
  partSize?: number;
  toolVersion: string;
  /** Bytes of a volume's send stream framed (called per chunk: keep it cheap). */
  onProgress?: (volume: string, bytes: number) => void;
  /** A volume's send starts (before any onProgress of it) or has ended. */
  onVolume?: (e: { phase: 'start' | 'end'; record: BackupRecord; volume: string; snapshot: string; parent?: string }) => void;
}

/** Writes one backup's archive into `pack` (the caller finalizes the pack). */
export async function writeBackupArchive(pack: tar.Pack, record: BackupRecord, opts: SendOptions): Promise<void> {
  const { log, signal } = opts;
  for (const v of record.volumes) {
    await requireSubvolume(v.snapshot, `snapshot of ${v.name}:`);
  }
  const parentOf = (name: string) =>
    record.parent && record.volumes.find((v) => v.name === name)?.parentUuid
      ? path.join(record.parent.set, name)
      : undefined;
  for (const v of record.volumes) {
    const p = parentOf(v.name);
    if (p) await requireSubvolume(p, `parent snapshot of ${v.name}:`);
  }
  const meta = await collectMeta(record.containerDir, record.volumes.map((v) => v.name), log);
  let changelog: Awaited<ReturnType<typeof open>> | undefined;
  if (record.changelog) {
    try {
      changelog = await open(record.changelog, 'r');
    } catch {
      throw new SbkError(`changelog ${record.changelog} named in the record does not exist`, ExitCode.notFound);
    }
  }
  try {
    // Each snapshot's root as it is (read-only, so as the restore must make it): see VolumeRoot.
    const roots: Record<string, VolumeRoot> = Object.create(null) as Record<string, VolumeRoot>;
    for (const v of record.volumes) {
      const st = await lstat(v.snapshot, { bigint: true });
      roots[v.name] = {
        mode: Number(st.mode & 0o7777n),
        uid: Number(st.uid),
        gid: Number(st.gid),
        atime: formatRootTime(st.atimeNs),
        mtime: formatRootTime(st.mtimeNs),
      };
    }
    const manifest = manifestFromRecord(record, {
      tool: `sbk ${opts.toolVersion}`,
      host: os.hostname(),
      meta: meta.map((m) => m.rel),
      changelog: changelog !== undefined,
      roots,
    });
    const w = new ArchiveWriter(pack, manifest, opts.partSize ?? DEFAULT_PART_SIZE);
    await w.start();
    for (const m of meta) {
      if (m.type === 'directory') await w.addMetaDirectory(m.rel, m.mode, m.mtime);
      else await w.addMetaFile(m.rel, m.data!, m.mode, m.mtime);
    }
    if (changelog) await w.addChangelog(changelog.createReadStream({ autoClose: false }), (await changelog.stat()).size);
    for (const v of record.volumes) {
      signal?.throwIfAborted();
      const parent = parentOf(v.name);
      log.verbose(`${record.name}: sending ${v.name}${parent ? ` against ${parent}` : ' whole'}`);
      const s = send(v.snapshot, { parent, signal });
      opts.onVolume?.({ phase: 'start', record, volume: v.name, snapshot: v.snapshot, parent });
      // A failing send is reported by `done`; the delta must not be taken as complete before it.
      const onProgress = opts.onProgress;
      const framing = w.addDelta(v.name, s.stdout, onProgress && ((n) => onProgress(v.name, n)));
      await Promise.all([framing, s.done]).catch(async (err) => {
        s.stdout.destroy();
        await s.done.catch(() => {});
        throw err;
      });
      opts.onVolume?.({ phase: 'end', record, volume: v.name, snapshot: v.snapshot, parent });
    }
    await w.finish();
  } finally {
    await changelog?.close();
  }
}

/**
 * The size a volume's send stream will have, estimated from a metadata-only send
 * (`btrfs send --no-data`, which lists every write as an UPDATE_EXTENT with its length and costs
 * a fraction of the real send): the stream's own bytes plus the data and the headers of the
 * WRITE commands that will carry it. Used for progress only: the send runs at the lowest CPU
 * priority, so that it takes nothing from the real work when the cores are busy.
 */
export async function estimateSendSize(snapshot: string, opts: { parent?: string; signal?: AbortSignal } = {}): Promise<number> {
  const { spawn } = await import('node:child_process');
  const { setPriority } = await import('node:os');
  const args = ['send', '-q', '--no-data', ...(opts.parent ? ['-p', opts.parent] : []), snapshot];
  const child = spawn('btrfs', args, { stdio: ['ignore', 'pipe', 'ignore'], signal: opts.signal });
  const exited = new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => resolve(code));
  });
  exited.catch(() => {});
  try {
    if (child.pid !== undefined) setPriority(child.pid, 19);
  } catch {
    // not allowed (another user's process cannot be reniced): run as it is
  }
  const est = new SendSizeEstimator();
  try {
    for await (const chunk of child.stdout as AsyncIterable<Buffer>) est.write(chunk);
    const code = await exited;
    if (code !== 0) throw new Error(`btrfs ${args.join(' ')} exited with ${code}`);
  } catch (err) {
    child.kill();
    await exited.catch(() => {});
    throw err;
  }
  return est.estimate();
}

/** The arithmetic of estimateSendSize over a `--no-data` stream (exported for tests). */
export class SendSizeEstimator {
  private buf: Buffer = Buffer.alloc(0);
  private headerSeen = false;
  private streamBytes = 0;
  private updateBytes = 0; // UPDATE_EXTENT commands, replaced by WRITEs in the real stream
  private dataBytes = 0;
  private writeOverhead = 0;

  write(chunk: Buffer): void {
    this.streamBytes += chunk.length;
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    let pos = 0;
    if (!this.headerSeen) {
      if (this.buf.length < 17) return;
      this.headerSeen = true;
      pos = 17; // "btrfs-stream\0" + le32 version
    }
    // Commands: le32 length of the attributes, le16 type, le32 crc, then TLVs (le16, le16, value).
    while (this.buf.length - pos >= 10) {
      const len = this.buf.readUInt32LE(pos);
      if (this.buf.length - pos < 10 + len) break;
      if (this.buf.readUInt16LE(pos + 4) === 22 /* UPDATE_EXTENT */) {
        let size = 0;
        let pathLen = 0;
        for (let a = pos + 10; a + 4 <= pos + 10 + len; ) {
          const type = this.buf.readUInt16LE(a);
          const l = this.buf.readUInt16LE(a + 2);
          if (type === 4 /* SIZE */ && l === 8) size = Number(this.buf.readBigUInt64LE(a + 4));
          else if (type === 15 /* PATH */) pathLen = l;
          a += 4 + l;
        }
        this.updateBytes += 10 + len;
        this.dataBytes += size;
        // The kernel writes at most 48 KiB per WRITE: header, path, offset and data TLV each time.
        this.writeOverhead += Math.ceil(size / (48 * 1024)) * (10 + 4 + pathLen + 12 + 4);
      }
      pos += 10 + len;
    }
    this.buf = this.buf.subarray(pos);
  }

  estimate(): number {
    return this.streamBytes - this.updateBytes + this.dataBytes + this.writeOverhead;
  }
}
