// Planning a restore: which archives, in which order, bring back one backup of a container.
// Archives are linked by what their manifests record (the parent's name and the UUID of every
// volume's parent snapshot), never by file-name substrings, so another container's archives
// (`web` vs `web_2`), an unrelated Full or a missing link are never mixed into a chain.
// Archives of the original Subutai tool have no manifest: they are chained by name order.
import { type Manifest } from '../../formats/archive/archive.js';
import { SbkError, StoreUnavailableError, ExitCode, type ExitCodeValue } from '../../core/errors.js';
import { backupName, formatTime, parseArchiveName } from '../../core/layout.js';
import { readArchiveHeadFrom } from '../../formats/archive/open.js';
import { openStore, type ArchiveStore } from '../../system/store.js';
import { linkProblem } from '../../formats/archive/links.js';

export interface ArchiveFile {
  path: string;
  /** Base name, `<c>_<time>[_Full].tar.gz` (or `.tar.zst`). */
  file: string;
  size: number;
  /** From the manifest when there is one, else from the file name. */
  container: string;
  time: number;
  full: boolean;
  /** Backup name, `<c>_<time>[_Full]`. */
  name: string;
  manifest?: Manifest;
  /** An archive of the original Subutai tool: no manifest, no checksums. */
  legacy: boolean;
  /** Why the archive cannot be used (unreadable, another container's): excluded from chains. */
  problem?: string;
  problemCode?: ExitCodeValue;
}

async function mapLimit<T, R>(items: T[], limit: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]!);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

const byTime = (a: ArchiveFile, b: ArchiveFile) =>
  a.time - b.time || Number(b.full) - Number(a.full) || (a.file < b.file ? -1 : a.file > b.file ? 1 : 0);

/**
 * Every archive of `container` in a store (a directory, a bucket), oldest first, each with its
 * manifest or the reason it cannot be used: only the head of each is read (ranged reads of an
 * object). `warn` hears about archives that are named for the container but are not its.
 */
export async function scanStore(
  where: ArchiveStore | string,
  container: string,
  opts: { warn?: (msg: string) => void } = {},
): Promise<ArchiveFile[]> {
  const store = typeof where === 'string' ? await openStore(where) : where;
  const candidates = (await store.list()).filter((o) => parseArchiveName(o.file)?.container === container).sort((a, b) => (a.file < b.file ? -1 : 1));
  const found = await mapLimit(candidates, 4, async ({ file, size }): Promise<ArchiveFile | undefined> => {
    const p = store.locationOf(file);
    const parsed = parseArchiveName(file)!;
    const a: ArchiveFile = {
      path: p,
      file,
      size,
      container: parsed.container,
      time: parsed.time,
      full: parsed.full,
      name: backupName(parsed.container, parsed.time, parsed.full),
      legacy: false,
    };
    try {
      const head = await readArchiveHeadFrom(await store.openHead(file), p);
      a.legacy = head.legacy;
      if (head.manifest) {
        const m = head.manifest;
        a.manifest = m;
        if (m.container !== container) {
          a.problem = `holds a backup of container ${m.container} (${m.name}), not of ${container}`;
          a.problemCode = ExitCode.corrupt;
          opts.warn?.(`${file}: ${a.problem}; ignored`);
        } else {
          if (m.name !== a.name) opts.warn?.(`${file}: the manifest names it ${m.name}; using the manifest`);
          a.time = m.time;
          a.full = m.full;
          a.name = m.name;
        }
      }
    } catch (err) {
      if (err instanceof StoreUnavailableError) throw err;
      a.problem = `unreadable: ${err instanceof SbkError ? err.message.replace(`${p}: `, '') : (err as Error).message}`;
      a.problemCode = err instanceof SbkError ? err.exitCode : ExitCode.failure;
    }
    return a;
  });
  const list = found.filter((a): a is ArchiveFile => a !== undefined).sort(byTime);
  // Two files with one manifest name (a copy under another file name): the chain would be
  // ambiguous, so the later ones are set aside.
  const seen = new Map<string, ArchiveFile>();
  for (const a of list) {
    if (!a.manifest || a.problem) continue;
    const first = seen.get(a.name);
    if (first) {
      a.problem = `holds the same backup as ${first.file}`;
      a.problemCode = ExitCode.conflict;
      opts.warn?.(`${a.file}: ${a.problem}; ignored`);
    } else seen.set(a.name, a);
  }
  return list;
}

// ---------------------------------------------------------------------------------------------
// Links

export interface Chain {
  /** The archives to restore, the Full first, the target last. */
  archives: ArchiveFile[];
  /** Why the chain cannot be restored (empty `archives` then). */
  problem?: string;
  problemCode?: ExitCodeValue;
}

/** The chain that ends at `target`, within `all` (the container's archives, oldest first). */
export function chainTo(target: ArchiveFile, all: ArchiveFile[]): Chain {
  const broken = (problem: string, problemCode: ExitCodeValue): Chain => ({ archives: [], problem, problemCode });
  if (target.problem) return broken(`${target.file}: ${target.problem}`, target.problemCode ?? ExitCode.corrupt);
  if (target.legacy) return legacyChainTo(target, all);

  const byName = new Map<string, ArchiveFile>();
  for (const a of all) if (a.manifest && !a.problem) byName.set(a.name, a);
  const chain: ArchiveFile[] = [target];
  let cur = target;
  while (!cur.manifest!.full) {
    const parentName = cur.manifest!.parent!.name;
    const parent = byName.get(parentName);
    if (!parent) {
      // Tell a parent that is there but unreadable from one that is missing.
      const unusable = all.find((a) => a.name === parentName && a.problem);
      if (unusable)
        return broken(
          `${cur.name} needs its parent ${parentName}, but ${unusable.file} ${unusable.problem}`,
          unusable.problemCode ?? ExitCode.corrupt,
        );
      return broken(
        `gap in the chain: ${cur.name} needs its parent ${parentName}, which is not in the store`,
        ExitCode.notFound,
      );
    }
    const problem = linkProblem(cur.manifest!, parent.manifest!);
    if (problem) return broken(`broken chain: ${problem}`, ExitCode.corrupt);
    if (chain.includes(parent)) return broken(`broken chain: a loop at ${parent.name}`, ExitCode.corrupt);
    chain.unshift(parent);
    cur = parent;
  }
  return { archives: chain };
}

/** Original Subutai archives carry no parent: the chain is the newest Full before and every archive after it. */
function legacyChainTo(target: ArchiveFile, all: ArchiveFile[]): Chain {
  const upTo = all.slice(0, all.indexOf(target) + 1);
  let start = -1;
  for (let i = upTo.length - 1; i >= 0; i--) {
    const a = upTo[i]!;
    // A readable sbk archive is never part of an old-tool chain; anything else in between
    // (legacy or unreadable) would be.
    if (a.legacy && a.full && !a.problem) {
      start = i;
      break;
    }
  }
  if (start < 0)
    return { archives: [], problem: `no Full backup of ${target.container} at or before ${target.name}`, problemCode: ExitCode.notFound };
  // Unreadable files in the range may be links of this chain: they break it. Foreign or
  // duplicate sbk archives (readable, with a manifest) are not links of an old-tool chain.
  const chain = upTo.slice(start).filter((a) => a.legacy || (a.problem && !a.manifest));
  const bad = chain.find((a) => a.problem);
  if (bad) return { archives: [], problem: `${bad.file} ${bad.problem}`, problemCode: bad.problemCode ?? ExitCode.corrupt };
  return { archives: chain };
}

export interface Plan {
  target: ArchiveFile;
  chain: ArchiveFile[];
}

/**
 * The archives to restore the newest backup of `container` at or before `at` (unix seconds;
 * default: the newest), oldest first. Throws a one-line error when there is none or its chain
 * is broken: a gap, an unreadable archive, a foreign link.
 */
export function planRestore(all: ArchiveFile[], container: string, dir: string, at?: number): Plan {
  // Foreign and duplicate archives (readable, set aside by scanStore) are not candidates; an
  // unreadable one is: when it is the newest, restoring an older point instead would be a surprise.
  const usable = all.filter((a) => a.container === container && !(a.manifest && a.problem));
  if (usable.length === 0) throw new SbkError(`no backup of ${container} in ${dir}`, ExitCode.notFound);
  const before = at === undefined ? usable : usable.filter((a) => a.time <= at);
  if (before.length === 0)
    throw new SbkError(
      `no backup of ${container} at or before ${formatTime(at!)} (the oldest is ${usable[0]!.name}, ${formatTime(usable[0]!.time)})`,
      ExitCode.notFound,
    );
  const target = before[before.length - 1]!;
  const chain = chainTo(target, all);
  if (chain.problem) throw new SbkError(chain.problem, chain.problemCode ?? ExitCode.corrupt);
  return { target, chain: chain.archives };
}

// ---------------------------------------------------------------------------------------------
// --at

const ISO_RE = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}(?::?\d{2})?)?)?$/i;

/**
 * `--at`: unix seconds, or an ISO 8601 date or date-time. Without a zone it is local time
 * (as date(1) reads it); a date alone is local midnight. Fractions of a second are dropped.
 * Every part must exist: month 1–12, a day of that month, hours 0–23, minutes and seconds 0–59
 * (no 24:00, no leap second), a zone offset of at most ±14:00.
 */
export function parseAtTime(s: string): number {
  const t = s.trim();
  if (/^\d{1,12}$/.test(t)) return Number(t);
  const m = ISO_RE.exec(t);
  const bad = () => new SbkError(`--at '${s}' is neither unix seconds nor an ISO 8601 date-time (e.g. 2024-05-01T12:00:00Z)`, ExitCode.usage);
  if (!m) throw bad();
  const [, y, mo, d, h = '00', mi = '00', sec = '00', , zone] = m;
  const nums = [Number(y), Number(mo), Number(d), Number(h), Number(mi), Number(sec)] as const;
  if (nums[1] < 1 || nums[1] > 12 || nums[2] < 1 || nums[2] > 31 || nums[3] > 23 || nums[4] > 59 || nums[5] > 59) throw bad();
  // Fields set one by one: `new Date(y, …)` and `Date.UTC(y, …)` read years 0–99 as 1900–1999.
  const utc = zone !== undefined;
  const date = new Date(0);
  if (utc) {
    date.setUTCFullYear(nums[0], nums[1] - 1, nums[2]);
    date.setUTCHours(nums[3], nums[4], nums[5], 0);
  } else {
    date.setFullYear(nums[0], nums[1] - 1, nums[2]);
    date.setHours(nums[3], nums[4], nums[5], 0);
  }
  // Date rolls 2024-02-31 over into March; refuse instead.
  if ((utc ? date.getUTCDate() : date.getDate()) !== nums[2]) throw bad();
  let ms = date.getTime();
  if (utc && zone.toUpperCase() !== 'Z') {
    const zm = /^([+-])(\d{2}):?(\d{2})?$/.exec(zone)!;
    const offMin = Number(zm[2]) * 60 + Number(zm[3] ?? 0);
    // No zone on Earth is beyond ±14:00 (Kiribati +14, Baker Island -12): a larger offset, or
    // minutes past 59, is a typo, not a time to restore to.
    if (Number(zm[3] ?? 0) > 59 || offMin > 14 * 60) throw bad();
    const off = offMin * 60_000;
    ms -= zm[1] === '+' ? off : -off;
  }
  if (!Number.isFinite(ms)) throw bad();
  return Math.floor(ms / 1000);
}

// ---------------------------------------------------------------------------------------------
// --list

export interface ListRow {
  name: string;
  container: string;
  time: number;
  date: string;
  kind: 'full' | 'incremental';
  legacy: boolean;
  size: number;
  path: string;
  parent: string | null;
  /** complete: restorable; broken: not (see problem); unreadable: the archive itself. */
  chain: 'complete' | 'broken' | 'unreadable';
  /** How many archives a restore of this point reads. */
  length?: number;
  problem?: string;
}

export function listRows(all: ArchiveFile[]): ListRow[] {
  return all.map((a) => {
    const c = chainTo(a, all);
    const row: ListRow = {
      name: a.name,
      container: a.container,
      time: a.time,
      date: formatTime(a.time),
      kind: a.full ? 'full' : 'incremental',
      legacy: a.legacy,
      size: a.size,
      path: a.path,
      parent: a.manifest?.parent?.name ?? null,
      chain: a.problem ? 'unreadable' : c.problem ? 'broken' : 'complete',
    };
    if (c.problem) row.problem = a.problem ?? c.problem;
    else row.length = c.archives.length;
    return row;
  });
}

/** `sbk-plan --list` as a table: a header, then one padded line per row (`size` formats sizes). */
export function listTable(rows: ListRow[], size: (n: number) => string): string[] {
  const table = [
    ['DATE', 'NAME', 'KIND', 'SIZE', 'PARENT', 'CHAIN'],
    ...rows.map((r) => [
      r.date,
      r.name,
      (r.legacy ? 'old-' : '') + (r.kind === 'full' ? 'Full' : 'Incr'),
      size(r.size),
      r.parent ?? '-',
      r.chain === 'complete' ? `complete (${r.length} archive${r.length === 1 ? '' : 's'})` : `${r.chain}: ${r.problem}`,
    ]),
  ];
  const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
  return table.map((row) => row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  '));
}
