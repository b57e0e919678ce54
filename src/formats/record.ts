// The backup record: one NDJSON line per backup, written by sbk-snap, passed on (and added to)
// by sbk-changelog, read by sbk-send. Documented in man/sbk.7, RECORDS.
import type { Readable } from 'node:stream';
import { lineError, readJsonLines } from './ndjson.js';
import { isValidContainerName, isValidVolumeName } from '../core/layout.js';

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

/**
 * How the snapshot set was taken: `frozen` (the container was running and held frozen for the
 * snapshots), `stopped` (it was not running, or sbk-snap --stop stopped it), `live` (it ran
 * while the volumes were snapshotted one by one: --no-freeze).
 */
export type Consistency = 'frozen' | 'stopped' | 'live';
export const CONSISTENCIES: readonly Consistency[] = ['frozen', 'stopped', 'live'];

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
  /** How the set was taken (absent in records of earlier versions). */
  consistency?: Consistency;
  /** With `frozen`: how long sbk-snap kept the container frozen, in ms (absent when it was frozen by someone else). */
  frozenMs?: number;
  /** Path of the changelog file, added by sbk-changelog. */
  changelog?: string;
}

export function formatRecord(r: BackupRecord): string {
  return JSON.stringify(r) + '\n';
}

function fail(line: number, msg: string): never {
  throw lineError('record', line, msg);
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
  if (v.consistency !== undefined && !CONSISTENCIES.includes(v.consistency as Consistency))
    fail(line, `consistency is not one of ${CONSISTENCIES.join(', ')}`);
  if (v.frozenMs !== undefined) {
    if (!Number.isSafeInteger(v.frozenMs) || (v.frozenMs as number) < 0) fail(line, 'frozenMs is not a whole number of ms');
    if (v.consistency !== 'frozen') fail(line, 'frozenMs without consistency "frozen"');
  }
  if (v.changelog !== undefined && !isAbs(v.changelog)) fail(line, 'changelog is not an absolute path');
  return v as unknown as BackupRecord;
}

/**
 * Reads NDJSON records from a stream. Refuses other kinds of input (tar, gzip, …) up front,
 * and names the line of any malformed or incomplete record.
 */
export async function* readRecords(source: Readable): AsyncGenerator<BackupRecord> {
  const lines = readJsonLines(source, { what: 'backup records (sbk-snap output)', noun: 'record', maxLength: 16 * 1024 * 1024 });
  for await (const { value, line } of lines) yield checkRecord(value, line);
}
