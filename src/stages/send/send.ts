// sbk-send's work: one archive (uncompressed tar, see archive.ts) per backup record, the
// volumes' `btrfs send` streams framed as they arrive, never spooled to disk.
import { readdir, lstat, open } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tar from 'tar-stream';
// The writer and the manifest, not the archive.js barrel: that also loads the reader and, through
// its faults, the codecs (zlib), which sbk-send never uses.
import { ArchiveWriter } from '../../formats/archive/writer.js';
import { DEFAULT_PART_SIZE, formatRootTime, manifestFromRecord, type VolumeRoot } from '../../formats/archive/manifest.js';
import { childSubvolumesOfAll, isSubvolume, nestedSubvolumes, requireSubvolume, send, sendMetadataNice } from '../../system/btrfs.js';
import type { ManifestNested } from '../../formats/archive/manifest.js';
import { META_FILE_MAX, META_TOTAL_MAX, configLogFiles, isSafeMetaPath, metaEntryCost } from '../../formats/archive/meta.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { BackupRecord } from '../../formats/record.js';
import type { Log } from '../../core/log.js';
import type { ProgressHooks } from '../../core/progress.js';
import { Attr, Cmd, COMMAND_HEADER_SIZE, STREAM_HEADER_SIZE, TLV_HEADER_SIZE } from '../../formats/sendstream/constants.js';

export interface MetaFile {
  rel: string;
  type: 'file' | 'directory';
  mode: number;
  mtime: Date;
  data?: Buffer;
}

const kindOf = (st: Awaited<ReturnType<typeof lstat>>): string =>
  st.isSymbolicLink() ? 'a symlink' : st.isSocket() ? 'a socket' : st.isFIFO() ? 'a fifo' : st.isBlockDevice() || st.isCharacterDevice() ? 'a device' : 'not a regular file';

/** Reads at most `max` + 1 bytes: a file that grew past the cap is not read whole. */
async function readCapped(file: string, max: number): Promise<Buffer> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(max + 1);
    let n = 0;
    while (n < buf.length) {
      const { bytesRead } = await fh.read(buf, n, buf.length - n, n);
      if (bytesRead === 0) break;
      n += bytesRead;
    }
    return buf.subarray(0, n);
  } finally {
    await fh.close();
  }
}

/**
 * The container's meta files (see the rule above). The config and fstab come first, so that no
 * amount of other files can crowd them out.
 */
export async function collectMeta(containerDir: string, volumeNames: string[], log: Log): Promise<MetaFile[]> {
  const out: MetaFile[] = [];
  let total = metaEntryCost(0); // the meta/ directory entry itself is not written, but keep a margin
  const leftOut = (rel: string, why: string) => log.verbose(`meta: left out ${path.join(containerDir, rel)}: ${why}`);
  let logs = new Map<string, string>();
  const first = ['config', 'fstab'];
  const rootDev = (await lstat(containerDir)).dev;
  const walk = async (rel: string) => {
    const dir = path.join(containerDir, rel);
    let found: string[];
    try {
      found = await readdir(dir);
    } catch (err) {
      if (rel !== '' && (err as NodeJS.ErrnoException).code === 'ENOENT') return; // removed while we looked
      throw err;
    }
    const names = found.sort((a, b) => {
      if (rel !== '') return a < b ? -1 : a > b ? 1 : 0;
      const [ia, ib] = [first.indexOf(a), first.indexOf(b)];
      return (ia < 0 ? 9 : ia) - (ib < 0 ? 9 : ib) || (a < b ? -1 : a > b ? 1 : 0);
    });
    for (const n of names) {
      if (n.startsWith('.')) continue;
      if (rel === '' && volumeNames.includes(n)) continue;
      const r = rel ? `${rel}/${n}` : n;
      const p = path.join(containerDir, r);
      let st;
      try {
        st = await lstat(p);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue; // removed while we looked
        throw err;
      }
      const key = logs.get(r);
      if (key) {
        leftOut(r, `a log file (${key} in the config)`);
        continue;
      }
      // Node's fs calls take whole paths: stay well below PATH_MAX.
      if (!isSafeMetaPath(r) || Buffer.byteLength(p) > 3800) {
        leftOut(r, 'a name an archive cannot hold');
        continue;
      }
      if (st.isDirectory()) {
        if (await isSubvolume(p)) {
          leftOut(r, 'a subvolume that is not a volume of the config (not archived, nor anything below it)');
          continue;
        }
        if (st.dev !== rootDev) {
          leftOut(r, 'a mount point of another filesystem (not archived, nor anything below it)');
          continue;
        }
        if (total + metaEntryCost(0) > META_TOTAL_MAX) {
          leftOut(r, `the meta files would take more than ${META_TOTAL_MAX} bytes`);
          continue;
        }
        total += metaEntryCost(0);
        out.push({ rel: r, type: 'directory', mode: st.mode & 0o7777, mtime: st.mtime });
        await walk(r);
      } else if (st.isFile()) {
        if (st.size > META_FILE_MAX) {
          leftOut(r, `larger than ${META_FILE_MAX} bytes (${st.size})`);
          continue;
        }
        let data: Buffer;
        try {
          data = await readCapped(p, META_FILE_MAX);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') continue;
          throw err;
        }
        if (data.length > META_FILE_MAX) {
          leftOut(r, `larger than ${META_FILE_MAX} bytes (it grew while being read)`);
          continue;
        }
        if (total + metaEntryCost(data.length) > META_TOTAL_MAX) {
          leftOut(r, `the meta files would take more than ${META_TOTAL_MAX} bytes`);
          continue;
        }
        total += metaEntryCost(data.length);
        out.push({ rel: r, type: 'file', mode: st.mode & 0o7777, mtime: st.mtime, data });
        if (r === 'config') logs = configLogFiles(data.toString('utf8'), containerDir);
      } else {
        leftOut(r, kindOf(st));
      }
    }
  };
  await walk('');
  if (!out.some((m) => m.rel === 'config' && m.type === 'file'))
    throw new SbkError(`${containerDir}/config is missing or not a regular file of at most ${META_FILE_MAX} bytes: the container cannot be restored without it`, ExitCode.notFound);
  return out;
}

export interface SendOptions {
  log: Log;
  signal?: AbortSignal;
  partSize?: number;
  toolVersion: string;
  /** Each volume's send: started, bytes framed, ended. */
  progress?: ProgressHooks<VolumeSend>;
}

/** A volume's send as it starts: whose, which snapshot, against which parent. */
export interface VolumeSend {
  record: BackupRecord;
  volume: string;
  snapshot: string;
  parent?: string;
}

/**
 * Checks that every snapshot of the record (and of its parent set, for the volumes sent against
 * one) is a subvolume; returns where each volume's parent snapshot is (undefined: sent whole).
 */
async function checkSnapshots(record: BackupRecord): Promise<(volume: string) => string | undefined> {
  for (const v of record.volumes) await requireSubvolume(v.snapshot, `snapshot of ${v.name}:`);
  const parentOf = (name: string) =>
    record.parent && record.volumes.find((v) => v.name === name)?.parentUuid ? path.join(record.parent.set, name) : undefined;
  for (const v of record.volumes) {
    const p = parentOf(v.name);
    if (p) await requireSubvolume(p, `parent snapshot of ${v.name}:`);
  }
  return parentOf;
}

/** Subvolumes nested in the volumes, which btrfs send does not cross: each is warned of and listed in the manifest. */
async function findNested(record: BackupRecord, log: Log, signal: AbortSignal | undefined): Promise<ManifestNested[]> {
  // One `btrfs subvolume list` answers for every volume; one it cannot place asks its own.
  const children = await childSubvolumesOfAll(record.volumes.map((v) => ({ live: v.source, snapshotUuid: v.uuid })), signal);
  const finds = await Promise.all(
    record.volumes.map((v, i) =>
      nestedSubvolumes(v.source, v.snapshot, signal, children[i]).catch((err: unknown) => {
        signal?.throwIfAborted();
        // The live volume is only asked which subvolumes it holds: without it the backup is still whole.
        log.warn(`${record.name}: cannot look for nested subvolumes in ${v.name} (${(err as Error).message})`);
        return [];
      }),
    ),
  );
  const nested: ManifestNested[] = [];
  for (const [i, v] of record.volumes.entries()) {
    for (const n of finds[i]!) {
      log.warn(
        `${record.name}: ${v.name}: nested subvolume ${n.path} is not backed up (btrfs send does not cross subvolumes); a restore makes an empty directory there`,
      );
      nested.push({ volume: v.name, ...n });
    }
  }
  return nested;
}

/** Each snapshot's root as it is (read-only, so as the restore must make it): see VolumeRoot. */
async function volumeRoots(record: BackupRecord): Promise<Record<string, VolumeRoot>> {
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
  return roots;
}

/** Frames one volume's `btrfs send` stream into the archive; a failed send says why in one line. */
async function sendVolume(w: ArchiveWriter, record: BackupRecord, v: BackupRecord['volumes'][number], parent: string | undefined, opts: SendOptions): Promise<void> {
  const { log, signal, progress } = opts;
  log.verbose(`${record.name}: sending ${v.name}${parent ? ` against ${parent}` : ' whole'}`);
  const s = send(v.snapshot, { parent, signal });
  progress?.start({ record, volume: v.name, snapshot: v.snapshot, parent });
  // A failing send is reported by `done`; the delta must not be taken as complete before it.
  const framing = w.addDelta(v.name, s.stdout, progress && ((n) => progress.add(n)));
  await Promise.all([framing, s.done]).catch(async (err) => {
    s.stdout.destroy();
    await s.done.catch(() => {});
    if (!signal?.aborted && /failed with -36|File name too long/.test((err as Error).message ?? '')) {
      const long = await findLongPath(v.snapshot, signal).catch(() => undefined);
      if (long)
        throw new SbkError(
          `${record.name}: btrfs send of volume ${v.name} failed: the path ${abbreviate(long)} (${Buffer.byteLength(long)} bytes) in ${v.name} ` +
            `is longer than btrfs send can handle (PATH_MAX ${PATH_MAX}); shorten it in the container`,
          ExitCode.failure,
          { cause: err },
        );
    }
    throw err;
  });
  progress?.end();
}

/** Writes one backup's archive into `pack` (the caller finalizes the pack). */
export async function writeBackupArchive(pack: tar.Pack, record: BackupRecord, opts: SendOptions): Promise<void> {
  const { log, signal } = opts;
  const parentOf = await checkSnapshots(record);
  const meta = await collectMeta(record.containerDir, record.volumes.map((v) => v.name), log);
  const nested = await findNested(record, log, signal);
  let changelog: Awaited<ReturnType<typeof open>> | undefined;
  if (record.changelog) {
    try {
      changelog = await open(record.changelog, 'r');
    } catch {
      throw new SbkError(`changelog ${record.changelog} named in the record does not exist`, ExitCode.notFound);
    }
  }
  try {
    const manifest = manifestFromRecord(record, {
      tool: `sbk ${opts.toolVersion}`,
      host: os.hostname(),
      meta: meta.map((m) => m.rel),
      changelog: changelog !== undefined,
      nestedSubvolumes: nested,
      roots: await volumeRoots(record),
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
      await sendVolume(w, record, v, parentOf(v.name), opts);
    }
    await w.finish();
  } finally {
    await changelog?.close();
  }
}

/** The longest path (bytes, relative to the subvolume) a send stream can carry, less one. */
const PATH_MAX = 4096;

/** A long path for a one-line message: its start and its end. */
function abbreviate(p: string): string {
  const s = JSON.stringify(p).slice(1, -1); // control characters escaped: the message stays one line
  return s.length <= 320 ? s : `${s.slice(0, 200)}…${s.slice(-100)}`;
}

/**
 * The first path in `snap` (relative to it) of PATH_MAX bytes or more, the one `btrfs send`
 * fails on with ENAMETOOLONG. Run only after such a failure: GNU find walks trees of any depth
 * (relative opens), where node's fs calls fail on the long paths themselves.
 */
async function findLongPath(snap: string, signal?: AbortSignal): Promise<string | undefined> {
  const { spawn } = await import('node:child_process');
  const child = spawn('find', ['.', '-xdev', '-print0'], { cwd: snap, stdio: ['ignore', 'pipe', 'ignore'], signal });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  child.once('error', () => {});
  let pending: Buffer = Buffer.alloc(0);
  try {
    for await (const chunk of child.stdout as AsyncIterable<Buffer>) {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      let start = 0;
      for (let z = pending.indexOf(0); z >= 0; z = pending.indexOf(0, start)) {
        // "./a/b" → "a/b": the path as the send stream has it.
        if (z - start - 2 >= PATH_MAX) return pending.subarray(start + 2, z).toString('utf8');
        start = z + 1;
      }
      pending = pending.subarray(start);
    }
    return undefined;
  } finally {
    child.kill();
    await exited;
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
  const { stdout, done } = await sendMetadataNice(snapshot, opts);
  const est = new SendSizeEstimator();
  try {
    for await (const chunk of stdout as AsyncIterable<Buffer>) est.write(chunk);
    await done;
  } catch (err) {
    stdout.destroy();
    throw err;
  }
  return est.estimate();
}

/** The kernel puts at most this much file data in one WRITE command (BTRFS_SEND_READ_SIZE). */
const MAX_WRITE_DATA = 48 * 1024;
/** A u64 attribute (FILE_OFFSET): its TLV header and 8 bytes. */
const U64_TLV_SIZE = TLV_HEADER_SIZE + 8;

/**
 * The arithmetic of estimateSendSize over a `--no-data` stream (exported for tests). It walks
 * the commands' framing (constants.ts) without checking CRCs: an estimate for progress only,
 * it must never fail the send.
 */
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
      if (this.buf.length < STREAM_HEADER_SIZE) return;
      this.headerSeen = true;
      pos = STREAM_HEADER_SIZE;
    }
    while (this.buf.length - pos >= COMMAND_HEADER_SIZE) {
      const len = this.buf.readUInt32LE(pos);
      const end = pos + COMMAND_HEADER_SIZE + len;
      if (this.buf.length < end) break;
      if (this.buf.readUInt16LE(pos + 4) === Cmd.UPDATE_EXTENT) this.updateExtent(pos, end);
      pos = end;
    }
    this.buf = this.buf.subarray(pos);
  }

  /** An UPDATE_EXTENT (header at `pos`, ending at `end`): the WRITEs that replace it. */
  private updateExtent(pos: number, end: number): void {
    let size = 0;
    let pathLen = 0;
    for (let a = pos + COMMAND_HEADER_SIZE; a + TLV_HEADER_SIZE <= end; ) {
      const type = this.buf.readUInt16LE(a);
      const l = this.buf.readUInt16LE(a + 2);
      if (type === Attr.SIZE && l === 8) size = Number(this.buf.readBigUInt64LE(a + TLV_HEADER_SIZE));
      else if (type === Attr.PATH) pathLen = l;
      a += TLV_HEADER_SIZE + l;
    }
    this.updateBytes += end - pos;
    this.dataBytes += size;
    // Each WRITE: its header, the PATH, the FILE_OFFSET and the DATA attribute's header.
    const perWrite = COMMAND_HEADER_SIZE + TLV_HEADER_SIZE + pathLen + U64_TLV_SIZE + TLV_HEADER_SIZE;
    this.writeOverhead += Math.ceil(size / MAX_WRITE_DATA) * perWrite;
  }

  estimate(): number {
    return this.streamBytes - this.updateBytes + this.dataBytes + this.writeOverhead;
  }
}
