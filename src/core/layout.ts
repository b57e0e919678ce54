// Names and places: the storage layout users' scripts depend on (see man/sbk.7, FILES).
//   <backup-dir>/<c>/<time>[_Full]/<volume>   read-only snapshots (a "snapshot set")
//   <backup-dir>/<c>_<time>[_Full].tar.gz     archive (gzip; .tar.zst: zstd)
//   <backup-dir>/<c>_<time>[_Full]_changelog.txt  changelog sidecar (archive base + _changelog.txt)
//   <backup-dir>/.locks/<c>.lock, <lxc-dir>/.sbk-locks/…   locks
//   .<time>[_Full].partial-<pid>, .<name>.tmp-<pid>-<n>, .sbk-restore-<name>-<pid>   work in progress
// Every on-disk name sbk makes is spelled here and nowhere else.
import path from 'node:path';
import { SbkError, ExitCode } from './errors.js';

export const DEFAULT_LXC_DIR = '/var/snap/subutai/common/lxc';

export interface Dirs {
  lxcDir: string;
  backupDir: string;
}

export function resolveDirs(opts: { lxcDir?: string; backupDir?: string }, env = process.env): Dirs {
  const lxcDir = path.resolve(opts.lxcDir || env.SBK_LXC_DIR || DEFAULT_LXC_DIR);
  const backupDir = path.resolve(opts.backupDir || env.SBK_BACKUP_DIR || path.join(lxcDir, 'backups'));
  return { lxcDir, backupDir };
}

// LXC accepts most characters, but sbk's names end up in file names, config lines and the
// `<c>_<time>` archive names: keep to a portable set, never `/`, spaces or a leading dot.
const CONTAINER_NAME = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}$/;

/** Checks a container name; returns it or throws a usage error naming the problem. */
export function checkContainerName(name: string, what = 'container name'): string {
  if (typeof name !== 'string' || name === '') throw new SbkError(`${what} is empty`, ExitCode.usage);
  // Control characters are shown escaped: the error stays one line.
  const shown = name.replace(/[\x00-\x1f\x7f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
  if (name.includes('/')) throw new SbkError(`${what} '${shown}' contains '/'`, ExitCode.usage);
  if (name.includes('..')) throw new SbkError(`${what} '${shown}' contains '..'`, ExitCode.usage);
  if (/\s/.test(name)) throw new SbkError(`${what} '${shown}' contains white space`, ExitCode.usage);
  if (name === 'backups') throw new SbkError(`'backups' is the backup directory, not a container`, ExitCode.usage);
  if (!CONTAINER_NAME.test(name))
    throw new SbkError(
      `${what} '${shown}' is not valid (letters, digits and _ . + - only, starting with a letter or digit, at most 100)`,
      ExitCode.usage,
    );
  return name;
}

export function isValidContainerName(name: string): boolean {
  try {
    checkContainerName(name);
    return true;
  } catch {
    return false;
  }
}

const VOLUME_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$/;

export function isValidVolumeName(name: string): boolean {
  return VOLUME_NAME.test(name) && name !== 'meta' && !name.includes('..');
}

/** The base name of a backup: `<c>_<time>` or `<c>_<time>_Full`. */
export function backupName(container: string, time: number, full: boolean): string {
  return `${container}_${time}${full ? '_Full' : ''}`;
}

export function setDirName(time: number, full: boolean): string {
  return `${time}${full ? '_Full' : ''}`;
}

/**
 * The suffixes of archive file names, one per compression format (each codec names its own,
 * formats/codecs/codec.ts; a unit test holds the two lists together). The first is the default's.
 */
export const ARCHIVE_SUFFIXES = ['.tar.gz', '.tar.zst'] as const;
export type ArchiveSuffix = (typeof ARCHIVE_SUFFIXES)[number];

export const archiveFileName = (container: string, time: number, full: boolean, suffix: string = ARCHIVE_SUFFIXES[0]) =>
  `${backupName(container, time, full)}${suffix}`;

/** Every name the archive of one backup may have: a backup is stored under one of them only. */
export const archiveFileNames = (container: string, time: number, full: boolean) =>
  ARCHIVE_SUFFIXES.map((s) => archiveFileName(container, time, full, s));

/** The changelog sidecar: the archive's base name with `_changelog.txt`, as the original layout names it. */
export const changelogFileName = (container: string, time: number, full: boolean) =>
  `${backupName(container, time, full)}_changelog.txt`;

/**
 * The name sbk gave every sidecar before, a Full's too (`<c>_<time>_changelog.txt`): still read
 * (pruned) beside a Full. For an incremental it is the same as changelogFileName.
 */
export const legacyChangelogFileName = (container: string, time: number) => `${container}_${time}_changelog.txt`;

export interface ParsedArchiveName {
  container: string;
  time: number;
  full: boolean;
  /** The file name's suffix ('.tar.gz', '.tar.zst'). */
  suffix: ArchiveSuffix;
}

// No leading zeros: a parsed name must format back to the same file name.
const ARCHIVE_RE = /^(.+)_(0|[1-9]\d{0,11})(_Full)?(\.tar\.gz|\.tar\.zst)$/;

/**
 * Parses `<c>_<time>[_Full].tar.gz` (or `.tar.zst`). Container names may themselves hold `_` and digits
 * (`web_2_1477297700.tar.gz` is container `web_2`), so the time is taken from the right.
 */
export function parseArchiveName(fileName: string): ParsedArchiveName | undefined {
  const m = ARCHIVE_RE.exec(path.basename(fileName));
  if (!m || !isValidContainerName(m[1]!)) return undefined;
  return { container: m[1]!, time: Number(m[2]), full: m[3] !== undefined, suffix: m[4] as ArchiveSuffix };
}

const CHANGELOG_RE = /^(.+)_(0|[1-9]\d{0,11})(_Full)?_changelog\.txt$/;

/** Parses a changelog sidecar's name `<c>_<time>[_Full]_changelog.txt` (either spelling of a Full's). */
export function parseChangelogFileName(fileName: string): Omit<ParsedArchiveName, 'suffix'> | undefined {
  const m = CHANGELOG_RE.exec(path.basename(fileName));
  if (!m || !isValidContainerName(m[1]!)) return undefined;
  return { container: m[1]!, time: Number(m[2]), full: m[3] !== undefined };
}

const SET_RE = /^(0|[1-9]\d{0,11})(_Full)?$/;

export function parseSetDirName(name: string): { time: number; full: boolean } | undefined {
  const m = SET_RE.exec(name);
  if (!m) return undefined;
  return { time: Number(m[1]), full: m[2] !== undefined };
}

// ---- names of work in progress: hidden (a leading dot), tagged with the pid that made them, so
// that a later run can tell a dead run's leftovers from a live one's and sweep them.

/** Where sbk-snap makes a snapshot set (`.<time>[_Full].partial-<pid>`), renamed to the final name when complete. */
export const partialSetName = (time: number, full: boolean, pid = process.pid) => `.${setDirName(time, full)}.partial-${pid}`;
/** partialSetName's names: [1] the set's final name, [2] the pid. */
export const PARTIAL_SET_RE = /^\.(\d+(?:_Full)?)\.partial-(\d+)$/;
/** The file in a partial set saying which run makes it. */
export const RUN_FILE = '.sbk-run';

/** A file written atomically is first `.<name>.tmp-<pid>-<n>` beside its final name. */
export const tempFileName = (finalName: string, n: number, pid = process.pid) => `.${finalName}.tmp-${pid}-${n}`;
/** tempFileName's names: [1] the pid. */
export const TEMP_FILE_RE = /^\..+\.tmp-(\d+)-\d+$/;

/** Where sbk-unpack receives a restore: `<lxc-dir>/.sbk-restore-<name>-<pid>/`. */
export const RESTORE_TEMP_PREFIX = '.sbk-restore-';
export const restoreTempDirName = (name: string, pid = process.pid) => `${RESTORE_TEMP_PREFIX}${name}-${pid}`;
/** restoreTempDirName's names: [1] the target name, [2] the pid. */
export const RESTORE_TEMP_RE = /^\.sbk-restore-(.+)-(\d+)$/;

/** An empty directory sbk-changelog compares a Full against, in the system's temp dir (mkdtemp prefix). */
export const CHANGELOG_EMPTY_TEMP_PREFIX = 'sbk-changelog-empty-';

/** Where sbk-unpack --tar/--list build the tree of a point, in --tmp (mkdtemp prefix). */
export const UNPACK_SCRATCH_PREFIX = 'sbk-unpack-';

// ---- locks: a container's backups in a backup dir; a restore target and a chain in an LXC dir.

/** Lock of a container's backups (snapshot sets, archives, pruning) in a backup dir. */
export const backupLockFile = (backupDir: string, container: string) => path.join(backupDir, '.locks', `${container}.lock`);
/**
 * Lock of the restores of one chain in an LXC dir, named by its container and Full (sanitized:
 * an original-layout archive may be named by its path).
 */
export const chainLockFile = (lxcDir: string, container: string, full: string) => {
  const safe = (s: string) => s.replace(/[^A-Za-z0-9_.+-]/g, '_').slice(0, 120);
  return path.join(lxcDir, '.sbk-locks', 'chains', `${safe(container)}@${safe(path.basename(full))}.lock`);
};
/** Lock of a restore target in an LXC dir. */
export const restoreLockFile = (lxcDir: string, name: string) => path.join(lxcDir, '.sbk-locks', `${name}.lock`);

/** Marker written in a snapshot set once its archive is safely stored (the set may be a parent). */
export const CONFIRMED_MARKER = '.sbk-confirmed';
/** The changelog sbk-changelog writes inside the set, before sbk-pack places the sidecar. */
export const SET_CHANGELOG = '.sbk-changelog.txt';

export function formatTime(time: number): string {
  const d = new Date(time * 1000);
  // A time beyond what Date can show (a damaged manifest's) is shown as the number, not a RangeError.
  if (Number.isNaN(d.getTime())) return `${time} (unix seconds)`;
  return d.toISOString().replace('.000Z', 'Z');
}
