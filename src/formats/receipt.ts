// Receipts: one NDJSON line per archive that `sbk-pack --store` has safely stored (verified,
// fsynced, under its final name). They travel back through the pipe (over ssh too) to
// `sbk-snap --confirm`, which marks the snapshot sets confirmed: a set becomes a parent only
// once its archive is safe where it is kept. Documented in man/sbk.7, RECEIPTS.
import { hostname } from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Manifest } from './archive/manifest.js';
import { lineError, readJsonLines } from './ndjson.js';
import { backupName, isValidContainerName, isValidVolumeName } from '../core/layout.js';
import type { BackupRecord } from './record.js';

const RECEIPT_FORMAT = 1;

export interface Receipt {
  sbk: 'receipt';
  format: number;
  /** Backup name `<c>_<time>[_Full]`. */
  name: string;
  container: string;
  time: number;
  full: boolean;
  // The rest is always written by `sbk-pack --store`, but optional on input (see checkReceipt).
  /** The stored file's base name. */
  archive?: string;
  /** Size and sha256 of the stored file. */
  size?: number;
  sha256?: string;
  /** The host that stored it (its host name) and the absolute path there. */
  host?: string;
  path?: string;
  /** When it was stored (ISO 8601). */
  stored?: string;
  /** The UUID of every volume's snapshot, from the manifest: ties the receipt to one snapshot set. */
  volumes?: { name: string; uuid: string }[];
}

export function formatReceipt(r: Receipt): string {
  return JSON.stringify(r) + '\n';
}

/** `host:/path`, as scp writes a remote file. */
export const receiptLocation = (r: Pick<Receipt, 'host' | 'path' | 'name'>) =>
  r.path ? `${r.host ? `${r.host}:` : ''}${r.path}` : r.name;

/** What `sbk-pack --store` knows of an archive it stored. */
export interface StoredFile {
  /** Absolute path of the stored file. */
  path: string;
  size: number;
  sha256: string;
  manifest: Manifest;
}

/** The receipt of an archive stored by `sbk-pack --store`; one in object storage has its `s3://` URL as path, and no host. */
export function receiptFor(a: StoredFile, host: string | undefined = a.path.startsWith('s3://') ? undefined : hostname()): Receipt {
  const m = a.manifest;
  return {
    sbk: 'receipt',
    format: RECEIPT_FORMAT,
    name: m.name,
    container: m.container,
    time: m.time,
    full: m.full,
    archive: path.basename(a.path),
    size: a.size,
    sha256: a.sha256,
    host,
    path: a.path,
    stored: new Date().toISOString(),
    volumes: m.volumes.map((v) => ({ name: v.name, uuid: v.uuid })),
  };
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function fail(line: number, msg: string): never {
  throw lineError('receipt', line, msg);
}

/**
 * Validates one parsed receipt. Only what confirmation relies on is required (name, container,
 * time, full); the rest is checked when present, so a script may write a minimal receipt for
 * stores that cannot read what they keep (encrypted files).
 */
export function checkReceipt(v: unknown, line: number): Receipt {
  if (!isObj(v)) fail(line, 'not a JSON object');
  if (v.sbk !== 'receipt')
    fail(line, `not an sbk receipt (field "sbk" is ${JSON.stringify(v.sbk)}${v.sbk === 'backup' ? ': a backup record, not a receipt' : ''})`);
  if (v.format !== RECEIPT_FORMAT) fail(line, `receipt format ${String(v.format)} is not supported (this sbk reads ${RECEIPT_FORMAT})`);
  if (typeof v.container !== 'string' || !isValidContainerName(v.container)) fail(line, 'container name missing or invalid');
  if (!Number.isSafeInteger(v.time) || (v.time as number) < 0) fail(line, 'time is not a unix time');
  if (typeof v.full !== 'boolean') fail(line, 'full is not true/false');
  if (v.name !== backupName(v.container, v.time as number, v.full))
    fail(line, `name ${JSON.stringify(v.name)} is not ${backupName(v.container, v.time as number, v.full)}`);
  const optString = (k: string) => {
    if (v[k] !== undefined && typeof v[k] !== 'string') fail(line, `${k} is not a string`);
  };
  for (const k of ['archive', 'host', 'path', 'stored']) optString(k);
  if (v.size !== undefined && (!Number.isSafeInteger(v.size) || (v.size as number) < 0)) fail(line, 'size is not a byte count');
  if (v.sha256 !== undefined && (typeof v.sha256 !== 'string' || !/^[0-9a-f]{64}$/.test(v.sha256))) fail(line, 'sha256 is not a sha256 in hex');
  if (v.volumes !== undefined) {
    if (!Array.isArray(v.volumes)) fail(line, 'volumes is not a list');
    for (const [i, vol] of (v.volumes as unknown[]).entries()) {
      if (!isObj(vol) || typeof vol.name !== 'string' || !isValidVolumeName(vol.name) || typeof vol.uuid !== 'string')
        fail(line, `volumes[${i}] is not {name, uuid}`);
    }
  }
  return v as unknown as Receipt;
}

/**
 * Reads receipts (NDJSON) from a stream, one at a time as they arrive, so that each set is
 * confirmed as soon as its archive is stored. Refuses other kinds of input up front and names
 * the line of a malformed receipt. Blank lines are ignored.
 */
export async function* readReceipts(source: Readable): AsyncGenerator<{ receipt: Receipt; line: number }> {
  const lines = readJsonLines(source, { what: 'receipts (sbk-pack --store output)', noun: 'receipt', maxLength: 1024 * 1024 });
  for await (const { value, line } of lines) yield { receipt: checkReceipt(value, line), line };
}

/**
 * The receipt of a backup stored where no sbk runs (an encrypted file on a plain store host):
 * the record names the backup and its snapshots, the store only says where the file is and what
 * it holds (`sbk-snap --receipt`).
 */
export function receiptOfRecord(r: BackupRecord, stored: { host: string; path: string; size: number; sha256: string }): Receipt {
  return {
    sbk: 'receipt',
    format: RECEIPT_FORMAT,
    name: r.name,
    container: r.container,
    time: r.time,
    full: r.full,
    archive: path.basename(stored.path),
    size: stored.size,
    sha256: stored.sha256,
    host: stored.host,
    path: stored.path,
    stored: new Date().toISOString(),
    volumes: r.volumes.map((v) => ({ name: v.name, uuid: v.uuid })),
  };
}
