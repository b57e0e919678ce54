// The backup record: one NDJSON line per backup, written by sbk-snap, passed on (and added to)
// by sbk-changelog, read by sbk-send. Documented in man/sbk.7, RECORDS.
import type { Readable } from 'node:stream';
import split2 from 'split2';
import { SbkError, ExitCode } from './errors.js';
import { peekStream, sniff, describeKind } from './input.js';
import { isValidContainerName, isValidVolumeName } from './layout.js';

export const RECORD_FORMAT = 1;

/** A snapshot set other than the one the record is about (its parent or predecessor). */
export interface SetRef {
  time: number;
  full: boolean;
  /** Backup name: `<c>_<time>[_Full]`, the archive's name without `.tar.gz`. */
  name: string;
  /** Absolute path of the set directory. */
  set: string;
}

export interface VolumeRecord {
  /** rootfs, home, opt, var … */
  name: string;
  /** Mount point inside the container: `/`, `/home` … */
  mount: string;
  /** The live subvolume that was snapshotted. */
  source: string;
  /** The read-only snapshot in the set. */
  snapshot: string;
  /** The snapshot's UUID. */
  uuid: string;
  /** UUID of the parent set's snapshot this volume is sent against (null: sent whole). */
  parentUuid: string | null;
}

export interface BackupRecord {
  sbk: 'backup';
  format: number;
  container: string;
  time: number;
  full: boolean;
  name: string;
  set: string;
  containerDir: string;
  /** The set an incremental is sent against; null for a Full. */
  parent: SetRef | null;
  /** The newest confirmed set before this one (a Full may have one): the changelog's base. */
  previous: SetRef | null;
  volumes: VolumeRecord[];
  /** Path of the changelog file, added by sbk-changelog. */
  changelog?: string;
}

export function formatRecord(r: BackupRecord): string {
  return JSON.stringify(r) + '\n';
}

function fail(line: number, msg: string): never {
  throw new SbkError(`record on line ${line}: ${msg}`, ExitCode.badInput);
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const isAbs = (v: unknown): v is string => typeof v === 'string' && v.startsWith('/') && !v.includes('\0');

function checkSetRef(v: unknown, line: number, what: string): SetRef | null {
  if (v === null || v === undefined) return null;
  if (!isObj(v)) fail(line, `${what} is not an object`);
  if (!Number.isSafeInteger(v.time) || (v.time as number) < 0) fail(line, `${what}.time is not a unix time`);
  if (typeof v.full !== 'boolean') fail(line, `${what}.full is not true/false`);
  if (typeof v.name !== 'string') fail(line, `${what}.name is missing`);
  if (!isAbs(v.set)) fail(line, `${what}.set is not an absolute path`);
  return v as unknown as SetRef;
}

/** Validates one parsed record; `line` is for messages. */
export function checkRecord(v: unknown, line: number): BackupRecord {
  if (!isObj(v)) fail(line, 'not a JSON object');
  if (v.sbk !== 'backup') fail(line, `not an sbk backup record (field "sbk" is ${JSON.stringify(v.sbk)})`);
  if (v.format !== RECORD_FORMAT) fail(line, `record format ${String(v.format)} is not supported (this sbk reads ${RECORD_FORMAT})`);
  if (typeof v.container !== 'string' || !isValidContainerName(v.container)) fail(line, 'container name missing or invalid');
  if (!Number.isSafeInteger(v.time) || (v.time as number) < 0) fail(line, 'time is not a unix time');
  if (typeof v.full !== 'boolean') fail(line, 'full is not true/false');
  if (typeof v.name !== 'string') fail(line, 'name is missing');
  if (!isAbs(v.set)) fail(line, 'set is not an absolute path');
  if (!isAbs(v.containerDir)) fail(line, 'containerDir is not an absolute path');
  const parent = checkSetRef(v.parent, line, 'parent');
  checkSetRef(v.previous, line, 'previous');
  if (!v.full && !parent) fail(line, 'an incremental record needs a parent');
  if (!Array.isArray(v.volumes) || v.volumes.length === 0) fail(line, 'volumes missing or empty');
  for (const [i, vol] of (v.volumes as unknown[]).entries()) {
    if (!isObj(vol)) fail(line, `volumes[${i}] is not an object`);
    if (typeof vol.name !== 'string' || !isValidVolumeName(vol.name)) fail(line, `volumes[${i}].name is invalid`);
    if (typeof vol.mount !== 'string' || !vol.mount.startsWith('/')) fail(line, `volumes[${i}].mount is invalid`);
    if (!isAbs(vol.snapshot)) fail(line, `volumes[${i}].snapshot is not an absolute path`);
    if (!isAbs(vol.source)) fail(line, `volumes[${i}].source is not an absolute path`);
    if (typeof vol.uuid !== 'string') fail(line, `volumes[${i}].uuid is missing`);
    if (vol.parentUuid !== null && typeof vol.parentUuid !== 'string') fail(line, `volumes[${i}].parentUuid is invalid`);
  }
  if (v.changelog !== undefined && !isAbs(v.changelog)) fail(line, 'changelog is not an absolute path');
  return v as unknown as BackupRecord;
}

/**
 * Reads NDJSON records from a stream. Refuses other kinds of input (tar, gzip, …) up front,
 * and names the line of any malformed or incomplete record.
 */
export async function* readRecords(source: Readable): AsyncGenerator<BackupRecord> {
  const { head, stream: input } = await peekStream(source, 512);
  const kind = sniff(head);
  if (kind === 'empty') return;
  // Blank lines are ignored, so input of blank lines only is no records (not "text").
  const blank = kind === 'text' && /^[ \t\r\n]*$/.test(head.toString('latin1'));
  if (kind !== 'ndjson' && !blank)
    throw new SbkError(
      `expected NDJSON backup records (sbk-snap output) on stdin, got ${describeKind[kind]}`,
      ExitCode.badInput,
    );
  let line = 0;
  // A line cut short is malformed JSON (an object cannot be cut and stay valid), so a missing
  // final newline needs no check of its own.
  const maxLength = 16 * 1024 * 1024;
  let split = 0; // lines split2 has cut (it may be ahead of the loop)
  const lines = input.pipe(split2((l: string) => (split++, l), { maxLength }));
  // pipe() does not pass errors on: without this a failing input would leave the loop waiting.
  input.on('error', (err) => lines.destroy(err));
  try {
    for await (const text of lines as AsyncIterable<string>) {
      line++;
      if (text.trim() === '') continue;
      let parsed: unknown;
      try {
        parsed = JSON.parse(text);
      } catch (err) {
        fail(line, `malformed JSON (${(err as Error).message})`);
      }
      yield checkRecord(parsed, line);
    }
  } catch (err) {
    // split2's limit: a "line" this long is not a record.
    if (!(err instanceof SbkError) && (err as Error | undefined)?.message === 'maximum buffer reached')
      fail(split + 1, `longer than ${maxLength} bytes (not NDJSON records?)`);
    throw err;
  }
}
