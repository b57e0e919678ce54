// The sbk archive format (man/sbk.7, ARCHIVE FORMAT): the names of its entries, the manifest
// (first entry: the backup record plus the tool's version) and the trailer (last entry: size and
// sha256 of every entry and of every whole delta), and the checks of both.
import { createHash } from 'node:crypto';
import { SbkError, ExitCode } from '../../core/errors.js';
import { backupName, isValidContainerName, isValidVolumeName } from '../../core/layout.js';
import type { BackupRecord, SetRef } from '../record.js';
import { isSafeMetaPath } from './meta.js';
import { corrupt } from './faults.js';

/** The format sbk writes. 2 differs from 1 only in what a whole delta's sha256 covers (VolumeDigest). */
export const ARCHIVE_FORMAT = 2;
/** The formats sbk reads: every archive an sbk ever wrote. */
export const READABLE_FORMATS: readonly number[] = [1, 2];
export const MANIFEST_ENTRY = 'manifest.json';
export const TRAILER_ENTRY = 'trailer.json';
export const CHANGELOG_ENTRY = 'changelog.txt';
export const META_PREFIX = 'meta/';
/** Default size of a delta part: the memory a stage needs to frame a stream of unknown length. */
export const DEFAULT_PART_SIZE = 8 * 1024 * 1024;
const PART_DIGITS = 6;

export interface ManifestVolume {
  name: string;
  mount: string;
  uuid: string;
  parentUuid: string | null;
  /**
   * The snapshot's root directory: an incremental's `btrfs receive` makes a new root, and the
   * stream carries no chmod/chown/utimes for a root that did not change. Absent in older archives.
   */
  root?: VolumeRoot;
}

/** A volume root's mode (permission bits), owner and times (`<seconds>.<9 digits>`, to the ns). */
export interface VolumeRoot {
  mode: number;
  uid: number;
  gid: number;
  atime: string;
  mtime: string;
}

const ROOT_TIME = /^-?\d{1,12}\.\d{9}$/;

/** `<seconds>.<nanoseconds, 9 digits>` of a bigint ns time, as VolumeRoot holds it. */
export function formatRootTime(ns: bigint): string {
  const sec = ns / 1_000_000_000n - (ns < 0n && ns % 1_000_000_000n !== 0n ? 1n : 0n);
  const frac = ns - sec * 1_000_000_000n;
  return `${sec}.${String(frac).padStart(9, '0')}`;
}

export interface Manifest {
  sbk: 'manifest';
  format: number;
  tool: string;
  created: string;
  container: string;
  time: number;
  full: boolean;
  name: string;
  parent: Omit<SetRef, 'set'> | null;
  previous: Omit<SetRef, 'set'> | null;
  volumes: ManifestVolume[];
  /** Where the snapshots were on the machine that made the backup (informational). */
  source: { containerDir: string; set: string; host: string };
  meta: string[];
  changelog: boolean;
  /**
   * Subvolumes nested in a volume, not in its send stream (btrfs send does not cross them); a
   * restore makes an empty directory at each. Absent in archives of older versions.
   */
  nestedSubvolumes?: ManifestNested[];
}

export interface ManifestNested {
  volume: string;
  /** Relative to the volume's root. */
  path: string;
  mode: number;
  uid: number;
  gid: number;
}

export interface EntryDigest {
  name: string;
  size: number;
  sha256: string;
}

export interface Trailer {
  sbk: 'trailer';
  format: number;
  name: string;
  entries: EntryDigest[];
  volumes: Record<string, { size: number; sha256: string; parts: number }>;
}

export function manifestFromRecord(
  r: BackupRecord,
  extra: { tool: string; host: string; meta: string[]; changelog: boolean; nestedSubvolumes?: ManifestNested[]; now?: Date; roots?: Record<string, VolumeRoot> },
): Manifest {
  const ref = (s: SetRef | null) => (s ? { time: s.time, full: s.full, name: s.name } : null);
  return {
    sbk: 'manifest',
    format: ARCHIVE_FORMAT,
    tool: extra.tool,
    created: (extra.now ?? new Date()).toISOString(),
    container: r.container,
    time: r.time,
    full: r.full,
    name: r.name,
    parent: ref(r.parent),
    previous: ref(r.previous),
    volumes: r.volumes.map((v) => {
      const root = extra.roots && Object.hasOwn(extra.roots, v.name) ? extra.roots[v.name] : undefined;
      return { name: v.name, mount: v.mount, uuid: v.uuid, parentUuid: v.parentUuid, ...(root ? { root } : {}) };
    }),
    source: { containerDir: r.containerDir, set: r.set, host: extra.host },
    meta: extra.meta,
    changelog: extra.changelog,
    nestedSubvolumes: extra.nestedSubvolumes ?? [],
  };
}

export const deltaPartName = (volume: string, part: number) => `${volume}.delta.${String(part).padStart(PART_DIGITS, '0')}`;

export function checkManifest(v: Record<string, unknown>, source: string): Manifest {
  const bad = (m: string) => corrupt(source, `manifest.json: ${m}`);
  if (v.sbk !== 'manifest') throw bad('not an sbk manifest');
  if (!READABLE_FORMATS.includes(v.format as number))
    throw new SbkError(`${source}: archive format ${String(v.format)} is not supported (this sbk reads ${READABLE_FORMATS.join(' and ')})`, ExitCode.badInput);
  if (typeof v.container !== 'string' || !isValidContainerName(v.container)) throw bad('invalid container name');
  if (!Number.isSafeInteger(v.time) || (v.time as number) < 0) throw bad('invalid time');
  if (typeof v.full !== 'boolean') throw bad('invalid full flag');
  if (typeof v.name !== 'string') throw bad('missing name');
  // The archive's file name and the chain are made from container, time and kind: the name must agree.
  if (v.name !== backupName(v.container, v.time as number, v.full))
    throw bad(`name ${JSON.stringify(v.name)} is not ${backupName(v.container, v.time as number, v.full)}`);
  if (!v.full && (typeof v.parent !== 'object' || v.parent === null)) throw bad('an incremental without a parent');
  if (!Array.isArray(v.volumes) || v.volumes.length === 0) throw bad('no volumes');
  const seen = new Set<string>();
  for (const vol of v.volumes as Record<string, unknown>[]) {
    if (typeof vol?.name !== 'string' || !isValidVolumeName(vol.name)) throw bad(`invalid volume name ${JSON.stringify(vol?.name)}`);
    if (seen.has(vol.name)) throw bad(`volume ${vol.name} listed twice`);
    seen.add(vol.name);
    if (typeof vol.mount !== 'string' || !vol.mount.startsWith('/')) throw bad(`invalid mount point of ${vol.name}`);
    if (vol.root !== undefined) {
      const r = vol.root as Record<string, unknown> | null;
      const id = (x: unknown) => Number.isSafeInteger(x) && (x as number) >= 0 && (x as number) <= 0xffffffff;
      if (
        typeof r !== 'object' || r === null ||
        !Number.isInteger(r.mode) || (r.mode as number) < 0 || (r.mode as number) > 0o7777 ||
        !id(r.uid) || !id(r.gid) ||
        typeof r.atime !== 'string' || !ROOT_TIME.test(r.atime) || typeof r.mtime !== 'string' || !ROOT_TIME.test(r.mtime)
      )
        throw bad(`invalid root of ${vol.name}`);
    }
  }
  if (v.nestedSubvolumes !== undefined) {
    if (!Array.isArray(v.nestedSubvolumes)) throw bad('nestedSubvolumes is not a list');
    const id = (n: unknown) => Number.isSafeInteger(n) && (n as number) >= 0 && (n as number) <= 0xffffffff;
    for (const n of v.nestedSubvolumes as Record<string, unknown>[]) {
      if (typeof n?.volume !== 'string' || !seen.has(n.volume)) throw bad(`a nested subvolume of an unlisted volume ${JSON.stringify(n?.volume)}`);
      if (typeof n.path !== 'string' || !isSafeMetaPath(n.path)) throw bad(`unsafe nested subvolume path ${JSON.stringify(n.path)}`);
      if (!Number.isSafeInteger(n.mode) || (n.mode as number) < 0 || (n.mode as number) > 0o7777 || !id(n.uid) || !id(n.gid))
        throw bad(`invalid mode or owner of nested subvolume ${n.path}`);
    }
  }
  return v as unknown as Manifest;
}

/** The manifest given to an archive of the original Subutai tool (it has none). */
export function legacyManifest(): Manifest {
  return {
    sbk: 'manifest',
    format: 0,
    tool: 'subutai (legacy)',
    created: '',
    container: '',
    time: 0,
    full: true,
    name: '',
    parent: null,
    previous: null,
    volumes: [],
    source: { containerDir: '', set: '', host: '' },
    meta: [],
    changelog: false,
  };
}

/**
 * The sha256 a trailer gives a whole delta. Format 1: of the send stream's bytes, a second hash of
 * every byte beside its part's, which cost writer and reader each a sha256 pass over the data.
 * Format 2: of the parts' sha256 digests (32 bytes each, in order), which covers the same bytes
 * (each part's digest is checked too) with one pass; a single-part delta's is then the sha256 of
 * its one digest, not of its bytes.
 */
export class VolumeDigest {
  private readonly hash = createHash('sha256');
  size = 0;
  parts = 0;
  private readonly ofBytes: boolean;

  constructor(format: number) {
    this.ofBytes = format === 1;
  }

  /** Bytes of the delta, in order (only format 1 hashes them). */
  bytes(chunk: Buffer): void {
    if (this.ofBytes) this.hash.update(chunk);
  }

  /** A whole part, once read: its size and sha256 (hex). */
  part(size: number, sha256: string): void {
    this.size += size;
    this.parts++;
    if (!this.ofBytes) this.hash.update(Buffer.from(sha256, 'hex'));
  }

  digest(): string {
    return this.hash.digest('hex');
  }
}

/** Checks a trailer against what was read of its archive: every entry's and every delta's size and sha256. */
export function verifyTrailer(
  v: Record<string, unknown>,
  manifest: Manifest,
  seen: EntryDigest[],
  volumes: Map<string, VolumeDigest>,
  sawChangelog: boolean,
  source: string,
): Trailer {
  const bad = (m: string) => corrupt(source, `${manifest.name}: ${m}`);
  if (v.sbk !== 'trailer' || !Array.isArray(v.entries) || typeof v.volumes !== 'object' || v.volumes === null)
    throw bad('trailer.json is not an sbk trailer');
  const t = v as unknown as Trailer;
  if (t.name !== manifest.name) throw bad(`the trailer belongs to ${String(t.name)}`);
  // The format says what a delta's sha256 covers: the trailer's must be the manifest's.
  if (t.format !== manifest.format) throw bad(`the trailer is of format ${String(t.format)}, the manifest of ${manifest.format}`);
  for (let i = 0; i < Math.max(t.entries.length, seen.length); i++) {
    const want = t.entries[i];
    const got = seen[i];
    if (!want) throw bad(`entry '${got!.name}' is not in the trailer`);
    if (!got) throw bad(`entry '${want.name}' is missing`);
    if (want.name !== got.name) throw bad(`entry '${got.name}' found where the trailer lists '${want.name}'`);
    if (want.size !== got.size) throw bad(`entry '${got.name}' has ${got.size} bytes, the trailer says ${want.size}`);
    if (want.sha256 !== got.sha256) throw bad(`entry '${got.name}' fails its sha256 check`);
  }
  if (manifest.changelog !== sawChangelog) throw bad(`changelog.txt ${sawChangelog ? 'is not announced' : 'is missing'}`);
  for (const vol of manifest.volumes) {
    const got = volumes.get(vol.name);
    const want = Object.hasOwn(t.volumes, vol.name) ? t.volumes[vol.name] : undefined;
    if (!got) throw bad(`the delta of volume ${vol.name} is missing`);
    if (!want) throw bad(`volume ${vol.name} is not in the trailer`);
    const digest = got.digest();
    if (want.size !== got.size || want.sha256 !== digest || want.parts !== got.parts)
      throw bad(`the delta of volume ${vol.name} fails its check`);
  }
  return t;
}

