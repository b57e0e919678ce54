// sbk-send's work: one archive (uncompressed tar, see archive.ts) per backup record, the
// volumes' `btrfs send` streams framed as they arrive, never spooled to disk.
import { readdir, readFile, lstat, open } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tar from 'tar-stream';
import { ArchiveWriter, DEFAULT_PART_SIZE, manifestFromRecord } from './archive.js';
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
  onProgress?: (volume: string, bytes: number) => void;
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
    const manifest = manifestFromRecord(record, {
      tool: `sbk ${opts.toolVersion}`,
      host: os.hostname(),
      meta: meta.map((m) => m.rel),
      changelog: changelog !== undefined,
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
      // A failing send is reported by `done`; the delta must not be taken as complete before it.
      const framing = w.addDelta(v.name, s.stdout, (n) => opts.onProgress?.(v.name, n));
      await Promise.all([framing, s.done]).catch(async (err) => {
        s.stdout.destroy();
        await s.done.catch(() => {});
        throw err;
      });
    }
    await w.finish();
  } finally {
    await changelog?.close();
  }
}
