// sbk-changelog's work on what passes through it: each backup record's changelog file, written
// into its snapshot set and named in the record; and the two listings (--between two snapshots,
// --from-stream) as text.
import path from 'node:path';
import type { Readable } from 'node:stream';
import { lstat } from 'node:fs/promises';
import { SbkError, ExitCode } from '../../core/errors.js';
import { SET_CHANGELOG } from '../../core/layout.js';
import type { Log } from '../../core/log.js';
import { formatChangelog, toLines, type ChangelogLine } from '../../formats/changelog-lines.js';
import { readRecords, type BackupRecord } from '../../formats/record.js';
import { exists, writeFileAtomic } from '../../system/atomic.js';
import { requireSubvolume } from '../../system/btrfs.js';
import { changesBetween, changesFromModel, type ChangelogOptions, type Method } from './changelog.js';
import { modelFromStream } from './model.js';

async function requireDir(p: string, what: string): Promise<void> {
  let st;
  try {
    st = await lstat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new SbkError(`${what} ${p} does not exist`, ExitCode.notFound);
    throw err;
  }
  if (!st.isDirectory()) throw new SbkError(`${what} ${p} is not a directory`, ExitCode.badInput);
}

/** Checks a snapshot argument for the method: the stream method needs BTRFS subvolumes. */
async function requireSnapshot(method: Method, p: string, what: string): Promise<void> {
  if (method === 'stream') await requireSubvolume(p, what);
  else await requireDir(p, what);
}

/**
 * The changelog lines of one record: every volume against the same volume of `previous`; with no
 * previous backup (a first Full), every path of every volume as added, so that the changelogs
 * together name every backup that touched a path.
 */
async function recordChangelog(r: BackupRecord, method: Method, log: Log, opts: ChangelogOptions): Promise<ChangelogLine[]> {
  const prev = r.previous;
  if (prev && !(await exists(prev.set)))
    throw new SbkError(`${r.name}: the previous snapshot set ${prev.set} does not exist`, ExitCode.notFound);
  const lines: ChangelogLine[] = [];
  for (const vol of r.volumes) {
    const old = prev ? path.join(prev.set, vol.name) : null;
    const hasOld = old !== null && (await exists(old));
    if (hasOld) await requireSnapshot(method, old, 'previous snapshot');
    await requireSnapshot(method, vol.snapshot, 'snapshot');
    log.verbose(`${r.name}: ${vol.name}: ${hasOld ? `changes since ${prev!.name}` : prev ? `new volume, every path added` : `first backup, every path added`} (${method})`);
    const changes = await changesBetween(method, hasOld ? old : null, vol.snapshot, opts);
    // One at a time: a spread of a volume's lines (500,000 paths) would overflow the call stack.
    for (const line of toLines(changes, vol.mount)) lines.push(line);
  }
  return lines;
}

export interface RecordChangelogOptions extends ChangelogOptions {
  method: Method;
  log: Log;
  /** Receives each record, its `changelog` set, once the file is written. */
  emit: (r: BackupRecord) => Promise<void>;
}

/**
 * Reads backup records, writes each one's changelog (SET_CHANGELOG in its set, atomically) and
 * passes it on with `changelog` set. No record at all is an error.
 */
export async function addChangelogs(input: Readable, opts: RecordChangelogOptions): Promise<void> {
  const { method, log, emit, ...changelogOpts } = opts;
  let count = 0;
  for await (const r of readRecords(input)) {
    if (opts.signal?.aborted) throw opts.signal.reason;
    count++;
    const lines = await recordChangelog(r, method, log, changelogOpts);
    const file = path.join(r.set, SET_CHANGELOG);
    await writeFileAtomic(file, formatChangelog(lines));
    r.changelog = file;
    log.info(`${r.name}: ${lines.length} change(s) since ${r.previous ? r.previous.name : 'nothing (first backup: every path added)'}`);
    await emit(r);
  }
  // Nothing at all: sbk-snap failed (its message says why). Still a failure, so that a plain
  // `sh` pipe (no pipefail) does not end in success.
  if (count === 0) throw new SbkError('no input (did the stage before fail?): expected backup records (sbk-snap output) on stdin', ExitCode.badInput);
}

/** The changelog text from OLD to NEW, both checked to be snapshots the method can compare. */
export async function changelogBetween(method: Method, oldSnap: string, newSnap: string, mount: string, opts: ChangelogOptions): Promise<string> {
  await requireSnapshot(method, oldSnap, 'old snapshot');
  await requireSnapshot(method, newSnap, 'new snapshot');
  const changes = await changesBetween(method, oldSnap, newSnap, opts);
  return formatChangelog(toLines(changes, mount));
}

/** The changelog text of a send stream alone (--from-stream). */
export async function changelogOfStream(source: AsyncIterable<Buffer | Uint8Array | string>, mount: string, opts: ChangelogOptions): Promise<string> {
  const model = await modelFromStream(source);
  const changes = await changesFromModel(model, undefined, opts);
  return formatChangelog(toLines(changes, mount));
}
