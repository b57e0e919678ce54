// The rsync method: `rsync -n -a --delete -i NEW/ OLD/`, each itemized line mapped to the same
// rules as the stream method.
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { execa } from 'execa';
import split2 from 'split2';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { Change } from '../../formats/changelog-lines.js';
import { ChangeSet, SnapshotFacts, addParentDirs, isDir, type Facts } from './classify.js';
import { SnapshotView } from './view.js';
import type { ChangelogOptions } from './changelog.js';
import { CHANGELOG_EMPTY_TEMP_PREFIX } from '../../core/layout.js';

/** rsync's escaping of names in --out-format (LC_ALL=C): `\#ooo` for each unprintable byte. */
export function unescapeRsync(name: string): string {
  return name.replace(/\\#([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8) & 0xff));
}

export interface RsyncItem {
  /** 11 characters, `YXcstpoguax`, or `*deleting  `. */
  flags: string;
  /** Raw bytes, no trailing '/'; '' for the root. */
  rel: string;
  dir: boolean;
}

/** Parses one line of `rsync -i --out-format='%i %n'`; undefined for anything else. */
export function parseRsyncLine(line: string): RsyncItem | undefined {
  if (line.length < 13 || line[11] !== ' ') return undefined;
  const flags = line.slice(0, 11);
  if (!/^(\*deleting  |[<>ch.][fdLDS][ .+?a-zA-Z]{9})$/.test(flags)) return undefined;
  let name = unescapeRsync(line.slice(12));
  const slash = name.endsWith('/');
  if (slash) name = name.slice(0, -1);
  if (name === '.') name = '';
  const deleting = flags.startsWith('*');
  return { flags, rel: name, dir: deleting ? slash : flags[1] === 'd' };
}

/**
 * The rules applied to one rsync item. `facts` supplies the old side for new items (a type
 * change shows in rsync as a new item only).
 */
async function classifyRsync(item: RsyncItem, facts: Facts, out: ChangeSet, allChanges: boolean): Promise<void> {
  const f = item.flags;
  if (f.startsWith('*deleting')) return out.add('deleted', item.rel, item.dir);
  if (f.slice(2) === '+++++++++') {
    const o = await facts.before(item.rel);
    if (!o) return out.add('added', item.rel, item.dir);
    if (isDir(o) !== item.dir) {
      out.add('deleted', item.rel, isDir(o));
      out.add('added', item.rel, item.dir);
    } else if (!item.dir) out.add('modified', item.rel, false);
    return;
  }
  // Attribute letters at fixed places: c(ontent/target) s(ize) t(ime) p o g u a x.
  const content = f[2] === 'c' || f[3] === 's' || f[4] === 't' || f[4] === 'T';
  const meta = f[5] === 'p' || f[6] === 'o' || f[7] === 'g' || f[9] === 'a' || f[10] === 'x';
  if (!item.dir && content) out.add('modified', item.rel, false);
  else if (allChanges && meta) out.add('modified', item.rel, item.dir);
}

/** `rsync -n -a --delete -i NEW/ OLD/`, mapped to the rules. OLD null: everything is added. */
export async function changesByRsync(oldDir: string | null, newDir: string, opts: ChangelogOptions = {}): Promise<Change[]> {
  let empty: string | undefined;
  const dest = oldDir ?? (empty = await mkdtemp(path.join(os.tmpdir(), CHANGELOG_EMPTY_TEMP_PREFIX)));
  try {
    // --modify-window=-1: compare mtimes to the nanosecond (rsync's default is whole seconds,
    // which misses a same-size rewrite within the second of the snapshot).
    const args = ['-n', '-a', '--delete', '-i', '--modify-window=-1', '--out-format=%i %n'];
    if (opts.allChanges) args.push('-X', '-A');
    args.push(`${newDir}/`, `${dest}/`);
    // LC_ALL=C: rsync then escapes every non-ASCII byte as \#ooo, so its output decodes losslessly.
    const child = execa('rsync', args, {
      env: { LC_ALL: 'C' },
      stdin: 'ignore',
      buffer: { stdout: false, stderr: true },
      cancelSignal: opts.signal,
    });
    const facts = new SnapshotFacts(new SnapshotView(oldDir), new SnapshotView(newDir));
    const out = new ChangeSet();
    let lineErr: unknown;
    try {
      for await (const line of (child.stdout as Readable).pipe(split2('\n')) as AsyncIterable<string>) {
        if (line === '') continue;
        const item = parseRsyncLine(line);
        if (!item) {
          opts.warn?.(`ignoring an unexpected line from rsync: ${JSON.stringify(line)}`);
          continue;
        }
        // With no old side, the root is simply added (below), whatever rsync says of it.
        if (item.rel === '' && !oldDir) continue;
        await classifyRsync(item, facts, out, !!opts.allChanges);
      }
    } catch (err) {
      lineErr = err;
    }
    try {
      await child;
    } catch (err) {
      if (opts.signal?.aborted) throw opts.signal.reason;
      const e = err as { stderr?: string; shortMessage?: string; code?: string };
      if (e.code === 'ENOENT') throw new SbkError('rsync not found: install rsync (apt-get install rsync)', ExitCode.failure);
      const detail = (e.stderr ?? '').trim().split('\n').filter(Boolean).slice(-2).join('; ') || e.shortMessage;
      throw new SbkError(`rsync dry run failed: ${detail}`, ExitCode.failure, { cause: err });
    }
    if (lineErr) throw lineErr;
    if (!oldDir) out.add('added', '', true);
    await addParentDirs(out, facts);
    return out.values();
  } finally {
    if (empty) await rm(empty, { recursive: true, force: true });
  }
}
