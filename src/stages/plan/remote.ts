// What the remote pipelines ask of sbk-plan when HOST cannot read the store (the encrypted one of
// sbk-backup-remote --gpg-passphrase-file): `--names` picks a container's backups out of a file
// listing by their names, `--head` reads the backup name and parent from an archive's first
// bytes. The scripts compose these with ssh, gpg and the standard tools instead of parsing names,
// tar headers and manifests themselves.
import type { Readable } from 'node:stream';
import { createInterface } from 'node:readline';
import { SbkError, ExitCode } from '../../core/errors.js';
import { backupName, formatTime, parseArchiveName } from '../../core/layout.js';
import { readArchives } from '../../formats/archive/archive.js';
import { openArchiveStream, readError } from '../../formats/archive/open.js';

/**
 * `--names`: the backups of `container` among the archive file names read from `input` (one per
 * line, `<c>_<time>[_Full].tar.gz` or `.tar.zst`, with any suffix after it such as `.gpg`, as `ls -1` prints them), at or before `at`, oldest first (a
 * Full before an incremental of the same second). Other lines are skipped. None: exit 5.
 */
export async function namesIn(input: Readable, container: string, at: number | undefined): Promise<string[]> {
  const found: { name: string; time: number; full: boolean }[] = [];
  for await (const line of createInterface({ input, crlfDelay: Infinity })) {
    const p = parseArchiveName(line);
    if (!p || p.container !== container || (at !== undefined && p.time > at)) continue;
    found.push({ name: backupName(p.container, p.time, p.full), time: p.time, full: p.full });
  }
  if (found.length === 0)
    throw new SbkError(`no backup of ${container} in the names read${at === undefined ? '' : ` at or before ${formatTime(at)}`}`, ExitCode.notFound);
  found.sort((a, b) => a.time - b.time || Number(b.full) - Number(a.full));
  return found.map((f) => f.name);
}

/**
 * `--head`: `NAME PARENT` of the archive on `input` (PARENT `-` for a Full), from its manifest,
 * its first tar entry: only the first bytes are read, the rest of the stream is left unread.
 */
export async function headOf(input: Readable, source = 'stdin'): Promise<string> {
  const tar = await openArchiveStream(input, source);
  try {
    for await (const entry of readArchives(tar, { legacy: true, source })) {
      if (entry.role !== 'manifest') break;
      const m = entry.manifest;
      if (!m.full && !m.parent) break;
      return `${m.name} ${m.full ? '-' : m.parent!.name}`;
    }
    throw new SbkError(`${source} is not an sbk archive (no manifest at its head)`, ExitCode.badInput);
  } catch (err) {
    throw readError(err, source);
  } finally {
    tar.destroy();
  }
}
