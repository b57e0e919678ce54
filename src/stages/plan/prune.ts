// Retention of archives (`sbk-plan CONTAINER --prune`): which backups a policy keeps, as
// restic's `forget` reads --keep-last/-daily/-weekly/-monthly, and which archives may then go.
// A kept backup keeps every archive of its chain (its Full and each incremental up to it), so a
// prune never leaves a kept point unrestorable. What cannot be reasoned about (an unreadable
// archive, a backup whose chain is already broken) is never removed, and keeps its ancestors.
import { chainTo, scanStore, type ArchiveFile } from './chain.js';
import { archiveFileNames, changelogFileName, formatTime, legacyChangelogFileName, parseArchiveName } from '../../core/layout.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { Log } from '../../core/log.js';
import type { ArchiveStore } from '../../system/store.js';

export interface KeepPolicy {
  last?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
}

export const POLICY_RULES = ['last', 'daily', 'weekly', 'monthly'] as const;
export type Rule = (typeof POLICY_RULES)[number];

export interface Decision {
  archive: ArchiveFile;
  keep: boolean;
  /** Why it is kept: "last", "daily 2026-11-03", "needed by c1_…", "unrestorable: …". */
  reasons: string[];
}

export interface PrunePlan {
  /** Every backup of the container, newest first, with the decision. */
  decisions: Decision[];
  /** The archives to remove, in a safe order: newest first (an incremental before its parent). */
  remove: ArchiveFile[];
  /** Backups that are kept because nothing can be said about them (warnings for the user). */
  unrestorable: Decision[];
}

export function policyIsEmpty(p: KeepPolicy): boolean {
  return POLICY_RULES.every((r) => !(p[r]! > 0));
}

const pad = (n: number) => String(n).padStart(2, '0');

/** The calendar fields of a unix time, in local time or UTC. */
function fields(time: number, utc: boolean): { y: number; m: number; d: number; dow: number } {
  const t = new Date(time * 1000);
  return utc
    ? { y: t.getUTCFullYear(), m: t.getUTCMonth() + 1, d: t.getUTCDate(), dow: t.getUTCDay() }
    : { y: t.getFullYear(), m: t.getMonth() + 1, d: t.getDate(), dow: t.getDay() };
}

/** ISO 8601 week (`2026-W45`): weeks start on Monday; week 1 holds the year's first Thursday. */
export function isoWeek(time: number, utc = false): string {
  const { y, m, d, dow } = fields(time, utc);
  // The Thursday of this week decides the year; count days from there in UTC (no DST steps).
  const day = Date.UTC(y, m - 1, d) / 86_400_000;
  const thursday = day - ((dow + 6) % 7) + 3;
  const ty = new Date(thursday * 86_400_000).getUTCFullYear();
  const week = Math.floor((thursday - Date.UTC(ty, 0, 1) / 86_400_000) / 7) + 1;
  return `${ty}-W${pad(week)}`;
}

/** The bucket a backup falls in for a rule. */
export function bucketOf(rule: Rule, time: number, utc = false, index = 0): string {
  const { y, m, d } = fields(time, utc);
  switch (rule) {
    case 'last':
      return `#${index}`; // every backup is its own bucket
    case 'daily':
      return `${y}-${pad(m)}-${pad(d)}`;
    case 'weekly':
      return isoWeek(time, utc);
    case 'monthly':
      return `${y}-${pad(m)}`;
  }
}

/**
 * The backups a policy keeps, as restic's forget does: going from the newest to the oldest, a
 * rule keeps a backup when it opens a bucket (day, week, month) the rule has not seen yet, and
 * while the rule has count left; the oldest backup is also kept by a rule that has count left
 * (so the history kept is as long as it can be). Returns, per kept backup, the reasons.
 */
export function applyPolicy(times: { name: string; time: number }[], policy: KeepPolicy, utc = false): Map<string, string[]> {
  const newestFirst = [...times].sort((a, b) => b.time - a.time);
  const left: Record<Rule, number> = { last: 0, daily: 0, weekly: 0, monthly: 0 };
  const lastBucket: Partial<Record<Rule, string>> = {};
  for (const r of POLICY_RULES) left[r] = Math.max(0, Math.floor(policy[r] ?? 0));
  const kept = new Map<string, string[]>();
  newestFirst.forEach((b, i) => {
    for (const r of POLICY_RULES) {
      if (left[r] <= 0) continue;
      const bucket = bucketOf(r, b.time, utc, i);
      const oldest = i === newestFirst.length - 1;
      if (bucket === lastBucket[r] && !oldest) continue;
      const extra = bucket === lastBucket[r]; // kept only as the oldest
      lastBucket[r] = bucket;
      left[r]--;
      const reasons = kept.get(b.name) ?? [];
      reasons.push(r === 'last' ? 'last' : `${r} ${bucket}${extra ? ' (oldest)' : ''}`);
      kept.set(b.name, reasons);
    }
  });
  return kept;
}

/**
 * What may go from the store, for `container`'s archives `all` (scanStore's list). Archives of
 * other containers and duplicates (set aside by scanStore) are never touched.
 */
export function planPrune(all: ArchiveFile[], container: string, policy: KeepPolicy, opts: { utc?: boolean } = {}): PrunePlan {
  const mine = all.filter((a) => a.container === container && !(a.manifest && a.problem));
  const chains = new Map(mine.map((a) => [a, chainTo(a, all)] as const));
  const restorable = mine.filter((a) => !chains.get(a)!.problem);
  const byPolicy = applyPolicy(restorable.map((a) => ({ name: a.name, time: a.time })), policy, opts.utc);

  const reasons = new Map<ArchiveFile, string[]>();
  const add = (a: ArchiveFile, why: string) => {
    const r = reasons.get(a) ?? [];
    if (!r.includes(why)) r.push(why);
    reasons.set(a, r);
  };
  for (const a of restorable) {
    const why = byPolicy.get(a.name);
    if (!why) continue;
    for (const w of why) add(a, w);
    for (const link of chains.get(a)!.archives) if (link !== a) add(link, `needed by ${a.name}`);
  }
  // Not restorable now, but maybe once a missing archive is put back: keep it and what it needs.
  const unrestorable = mine.filter((a) => chains.get(a)!.problem);
  for (const a of unrestorable) {
    add(a, `not restorable: ${chains.get(a)!.problem}`);
    for (const p of ancestors(a, mine)) add(p, `may be needed by ${a.name}`);
  }

  const newestFirst = [...mine].sort((a, b) => b.time - a.time || Number(a.full) - Number(b.full));
  const decisions = newestFirst.map((a) => ({ archive: a, keep: reasons.has(a), reasons: reasons.get(a) ?? [] }));
  return {
    decisions,
    remove: decisions.filter((d) => !d.keep).map((d) => d.archive),
    unrestorable: decisions.filter((d) => unrestorable.includes(d.archive)),
  };
}

/**
 * What a backup whose chain is broken might still need. With a manifest: its parents by name,
 * when they lead to a Full (a link that fails its UUID check); when a parent is missing, its own
 * Full cannot be known, so everything older. Without a manifest (an unreadable or original-tool
 * archive, chained by name order): everything older that has no manifest either.
 */
function ancestors(a: ArchiveFile, mine: ArchiveFile[]): ArchiveFile[] {
  if (!a.manifest) return mine.filter((x) => !x.manifest && x.time < a.time);
  const byName = new Map(mine.filter((x) => x.manifest).map((x) => [x.name, x] as const));
  const out: ArchiveFile[] = [];
  let cur: ArchiveFile = a;
  while (!cur.manifest!.full) {
    const p = cur.manifest!.parent ? byName.get(cur.manifest!.parent.name) : undefined;
    if (!p || p === a || out.includes(p)) return mine.filter((x) => x.time < a.time);
    out.push(p);
    cur = p;
  }
  return out;
}

/**
 * The files to remove for one archive, in order: its changelog sidecars (if in `present`, the
 * store's listing), then the archive. A Full's sidecar may also have the name sbk gave it before
 * (`<c>_<time>_changelog.txt`); that one is the Full's only while no incremental
 * `<c>_<time>.tar.gz` (or `.tar.zst`) owns that name.
 */
export function filesOf(a: ArchiveFile, present: Set<string>): string[] {
  // Named after the archive's file, as the store named it.
  const f = parseArchiveName(a.file) ?? a;
  const names = [changelogFileName(f.container, f.time, f.full)];
  if (f.full && !archiveFileNames(f.container, f.time, false).some((n) => present.has(n))) names.push(legacyChangelogFileName(f.container, f.time));
  // The sidecars first: a prune cut short leaves an archive without its changelog (as a store
  // cut short may), never a changelog without its archive.
  return [...names.filter((n) => present.has(n)), a.file];
}

export interface PruneOptions {
  /** NDJSON: one object per backup with its decision, instead of the paths. */
  json?: boolean;
  /** Remove the files (under the container's lock of DIR), not only print them. */
  delete?: boolean;
  /** --wait: seconds to wait for the lock (Infinity: for ever). */
  wait?: number;
  signal: AbortSignal;
  log: Log;
  /** Writes one line of output (without its newline), honouring backpressure. */
  emit: (line: string) => Promise<void>;
}

/**
 * `sbk-plan --prune`: the archives (and changelog sidecars) a policy lets go, one path per line in
 * a safe deletion order; with `delete` they are removed, under the container's lock of DIR.
 */
export async function prune(container: string, store: ArchiveStore, policy: KeepPolicy, o: PruneOptions): Promise<void> {
  if (!o.delete) return pruneUnlocked(container, store, policy, o);
  // The same lock sbk-pack takes to store into DIR: nothing is stored while the plan is made and carried out.
  await store.exclusive(container, { holder: `sbk-plan --prune --delete ${container}`, wait: o.wait, signal: o.signal }, () =>
    pruneUnlocked(container, store, policy, o),
  );
}

async function pruneUnlocked(container: string, store: ArchiveStore, policy: KeepPolicy, o: PruneOptions): Promise<void> {
  const present = new Set((await store.list()).map((x) => x.file));
  const all = await scanStore(store, container, { warn: (m) => o.log.warn(m) });
  if (!all.some((a) => a.container === container)) throw new SbkError(`no backup of ${container} in ${store.location}`, ExitCode.notFound);
  const pathsOf = (a: ArchiveFile) => filesOf(a, present).map((f) => store.locationOf(f));
  const plan = planPrune(all, container, policy);
  for (const d of plan.unrestorable)
    o.log.warn(`${d.archive.name} cannot be restored (${d.reasons[0]!.replace(/^not restorable: /, '')}); kept, with the archives it may need`);
  for (const d of plan.decisions) o.log.verbose(`${d.keep ? 'keep' : 'remove'} ${d.archive.name}${d.keep ? ` (${d.reasons.join('; ')})` : ''}`);
  if (o.json) {
    for (const d of plan.decisions) {
      const a = d.archive;
      await o.emit(
        JSON.stringify({
          name: a.name,
          time: a.time,
          date: formatTime(a.time),
          kind: a.full ? 'full' : 'incremental',
          action: d.keep ? 'keep' : 'remove',
          reasons: d.reasons,
          files: d.keep ? [a.path] : pathsOf(a),
        }),
      );
    }
  }
  if (!o.delete) {
    if (!o.json) for (const a of plan.remove) for (const f of pathsOf(a)) await o.emit(f);
    return;
  }
  // Newest first: an incremental goes before its parent, so a prune cut short never leaves an
  // incremental without its chain. Removed paths are printed as they go.
  for (const a of plan.remove) {
    o.signal.throwIfAborted();
    for (const f of filesOf(a, present)) {
      await store.remove(f);
      if (!o.json) await o.emit(store.locationOf(f));
    }
    o.log.verbose(`removed ${a.name}`);
  }
  if (plan.remove.length) await store.settle();
  const kept = plan.decisions.length - plan.remove.length;
  o.log.info(`${container}: removed ${plan.remove.length} backup${plan.remove.length === 1 ? '' : 's'}, kept ${kept}`);
}
