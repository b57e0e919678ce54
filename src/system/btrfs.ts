// The btrfs commands sbk runs, through execa, and the one removal of directory trees that hold
// subvolumes (removeTree). Big outputs (send streams) are never buffered: stdout is a stream
// (`buffer: {stdout: false}`); stderr is kept so errors can quote it.
import { statfs, stat, lstat, readdir, realpath, rm, rmdir } from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { execa, type ResultPromise } from 'execa';
import { SbkError, ExitCode } from '../core/errors.js';

const BTRFS_SUPER_MAGIC = 0x9123683e;
/** Inode number of every subvolume's root directory on BTRFS. */
const SUBVOLUME_ROOT_INO = 256;
/** Inode number of the empty directory a snapshot shows where the source had a nested subvolume. */
const EMPTY_SUBVOL_DIR_INO = 2;

export async function isOnBtrfs(p: string): Promise<boolean> {
  const s = await statfs(p);
  return Number(s.type) === BTRFS_SUPER_MAGIC;
}

/** Subvolume check that needs neither root nor btrfs-progs. */
export async function isSubvolume(p: string): Promise<boolean> {
  const [fs, st] = await Promise.all([statfs(p), stat(p)]);
  return Number(fs.type) === BTRFS_SUPER_MAGIC && st.isDirectory() && st.ino === SUBVOLUME_ROOT_INO;
}

/** Throws a clear error unless `p` is a BTRFS subvolume. */
export async function requireSubvolume(p: string, what: string): Promise<void> {
  let fs, st;
  try {
    [fs, st] = await Promise.all([statfs(p), stat(p)]);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new SbkError(`${what} ${p} does not exist`, ExitCode.notFound);
    throw err;
  }
  if (Number(fs.type) !== BTRFS_SUPER_MAGIC) throw new SbkError(`${what} ${p} is not on a BTRFS filesystem`, ExitCode.badInput);
  if (!st.isDirectory() || st.ino !== SUBVOLUME_ROOT_INO)
    throw new SbkError(`${what} ${p} is not a BTRFS subvolume`, ExitCode.badInput);
}

function btrfsError(args: string[], err: unknown): SbkError {
  const e = err as { stderr?: string | Uint8Array; shortMessage?: string; code?: string; message?: string };
  if (e.code === 'ENOENT')
    return new SbkError('btrfs not found: install btrfs-progs (apt-get install btrfs-progs)', ExitCode.failure);
  // A send runs with `encoding: 'buffer'` (its stdout is binary), so its stderr is bytes too.
  const stderr = e.stderr instanceof Uint8Array ? Buffer.from(e.stderr).toString('utf8') : (e.stderr ?? '');
  const detail = stderr.trim().split('\n').filter(Boolean).slice(-3).join('; ') || e.shortMessage || e.message;
  return new SbkError(`btrfs ${args.join(' ')} failed: ${detail}`, ExitCode.failure, { cause: err });
}

export async function btrfs(args: string[], signal?: AbortSignal): Promise<string> {
  try {
    const r = await execa('btrfs', args, { cancelSignal: signal, stdin: 'ignore' });
    return r.stdout;
  } catch (err) {
    if (signal?.aborted) throw signal.reason;
    throw btrfsError(args, err);
  }
}

export interface SubvolumeInfo {
  uuid: string;
  parentUuid: string | null;
  receivedUuid: string | null;
  readonly: boolean;
  generation: number;
}

function parseSubvolumeShow(out: string): SubvolumeInfo {
  const field = (name: string): string | null => {
    const m = new RegExp(`^\\s*${name}:\\s*(.*)$`, 'm').exec(out);
    const v = m?.[1]?.trim();
    return !v || v === '-' ? null : v;
  };
  const uuid = field('UUID');
  if (!uuid) throw new SbkError(`cannot read the UUID from 'btrfs subvolume show' output`, ExitCode.failure);
  return {
    uuid,
    parentUuid: field('Parent UUID'),
    receivedUuid: field('Received UUID'),
    readonly: /\breadonly\b/.test(field('Flags') ?? ''),
    generation: Number(field('Generation') ?? 0),
  };
}

export async function subvolumeInfo(p: string, signal?: AbortSignal): Promise<SubvolumeInfo> {
  return parseSubvolumeShow(await btrfs(['subvolume', 'show', p], signal));
}

/** The root of the subvolume that holds directory `dir`: the nearest directory of inode 256 up from it. */
async function subvolumeRootOf(dir: string): Promise<string | undefined> {
  for (let p = await realpath(dir); ; p = path.dirname(p)) {
    if ((await stat(p)).ino === SUBVOLUME_ROOT_INO) return p;
    if (path.dirname(p) === p) return undefined;
  }
}

/**
 * subvolumeInfo of several subvolumes (a snapshot set's) for one process rather than one each:
 * those side by side in a subvolume are looked up in one `btrfs subvolume list -o -r` of it
 * (the read-only subvolumes directly inside it, their paths from the filesystem's top level).
 * A path is taken from that list only when exactly one line names it; anything else (not
 * read-only, not listed, a path the list could name twice) is asked of `show` as before.
 */
export async function subvolumeInfos(paths: string[], signal?: AbortSignal): Promise<SubvolumeInfo[]> {
  const out: (SubvolumeInfo | undefined)[] = paths.map(() => undefined);
  const groups = new Map<string, { i: number; rel: string }[]>();
  await Promise.all(
    paths.map(async (p, i) => {
      const real = await realpath(p).catch(() => undefined);
      const root = real && (await subvolumeRootOf(path.dirname(real)).catch(() => undefined));
      if (!real || !root) return;
      const g = groups.get(root) ?? [];
      g.push({ i, rel: path.relative(root, real) });
      groups.set(root, g);
    }),
  );
  await Promise.all(
    [...groups].map(async ([root, members]) => {
      if (members.length < 2) return; // one path: `show` costs the same
      const lines = (await btrfs(['subvolume', 'list', '-o', '-r', '-u', '-q', '-R', root], signal)).split('\n');
      for (const { i, rel } of members) {
        const hits = lines
          .map((l) => LIST_LINE.exec(l))
          .filter((m): m is RegExpExecArray => m !== null && (m[5] === rel || m[5]!.endsWith('/' + rel)));
        if (hits.length !== 1) continue;
        const [, gen, parentUuid, receivedUuid, uuid] = hits[0]!;
        const orNull = (v: string | undefined) => (!v || v === '-' ? null : v);
        out[i] = { uuid: uuid!, parentUuid: orNull(parentUuid), receivedUuid: orNull(receivedUuid), readonly: true, generation: Number(gen) };
      }
    }),
  );
  return Promise.all(out.map((info, i) => info ?? subvolumeInfo(paths[i]!, signal)));
}

/** A line of `btrfs subvolume list -u -q -R`: gen, parent UUID, received UUID, UUID, path. */
const LIST_LINE = /^ID \d+ gen (\d+) top level \d+ parent_uuid (\S+)\s+received_uuid (\S+)\s+uuid (\S+) path (.*)$/;

export async function snapshot(src: string, dst: string, opts: { readonly: boolean }, signal?: AbortSignal) {
  await btrfs(['subvolume', 'snapshot', ...(opts.readonly ? ['-r'] : []), src, dst], signal);
}

async function deleteSubvolume(p: string): Promise<void> {
  await deleteSubvolumes([p]);
}

/** One `btrfs subvolume delete` for several subvolumes (a set's volumes): one process, not four. */
async function deleteSubvolumes(paths: string[]): Promise<void> {
  if (paths.length === 0) return;
  // Never cancelled: clean-up must finish even while the run is being aborted.
  await btrfs(['subvolume', 'delete', ...paths]);
}

/** Deletes a subvolume; one holding nested subvolumes (docker in a container …) is emptied of them first. */
async function deleteSubvolumeDeep(p: string): Promise<void> {
  try {
    await deleteSubvolume(p);
  } catch (err) {
    // Rare (only a live container's volume can hold nested subvolumes): look only then.
    const nested = await childSubvolumes(p).catch(() => []);
    if (nested.length === 0) throw err;
    for (const n of nested) await deleteSubvolumeDeep(path.join(p, n));
    await deleteSubvolume(p);
  }
}

/**
 * Removes a file or a directory tree that may hold subvolumes (rm cannot delete those): a
 * snapshot set, a restore's temporary directory. The subvolumes side by side in a directory go
 * in one `btrfs subvolume delete`; only when that fails is each deleted on its own, emptied of
 * nested subvolumes first. Symlinks are removed, never followed. A missing `p` is no error.
 * Names are handled as bytes: a tree may hold names that are not UTF-8.
 */
export async function removeTree(p: string | Buffer): Promise<void> {
  let st;
  try {
    st = await lstat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isDirectory()) {
    await rm(p, { force: true });
    return;
  }
  const asText = (b: string | Buffer) => (typeof b === 'string' ? b : Buffer.from(b.toString('utf8')).equals(b) ? b.toString('utf8') : undefined);
  const text = asText(p);
  if (text !== undefined && (await isSubvolume(text).catch(() => false))) {
    await deleteSubvolumeDeep(text);
    return;
  }
  const subvolumes: string[] = [];
  const others: Buffer[] = [];
  const dir = typeof p === 'string' ? Buffer.from(p) : p;
  for (const e of (await readdir(p, { withFileTypes: true, encoding: 'buffer' })) as unknown as { name: Buffer; isDirectory(): boolean }[]) {
    const c = Buffer.concat([dir, Buffer.from('/'), e.name]);
    const ct = asText(c);
    if (e.isDirectory() && ct !== undefined && (await isSubvolume(ct).catch(() => false))) subvolumes.push(ct);
    else others.push(c);
  }
  try {
    await deleteSubvolumes(subvolumes);
  } catch {
    // One of them holds nested subvolumes (or went meanwhile): each on its own, deep.
    for (const s of subvolumes) if (await isSubvolume(s).catch(() => false)) await deleteSubvolumeDeep(s);
  }
  for (const c of others) await removeTree(c);
  await rmdir(p);
}

/**
 * Starts `btrfs send [-p parent] snap`; the caller reads `.stdout` and awaits the process
 * (which rejects with the btrfs message if send fails).
 */
export function send(
  snap: string,
  opts: { parent?: string; noData?: boolean; proto?: number; signal?: AbortSignal } = {},
): { stdout: Readable; done: Promise<void> } {
  const args = ['send', '-q'];
  if (opts.parent) args.push('-p', opts.parent);
  if (opts.noData) args.push('--no-data');
  if (opts.proto) args.push('--proto', String(opts.proto));
  args.push(snap);
  const child: ResultPromise = execa('btrfs', args, {
    buffer: { stdout: false, stderr: true },
    stdin: 'ignore',
    cancelSignal: opts.signal,
    encoding: 'buffer',
  });
  const done = child.then(
    () => undefined,
    (err) => {
      if (opts.signal?.aborted) throw opts.signal.reason;
      throw btrfsError(args, err);
    },
  );
  return { stdout: child.stdout as Readable, done };
}

/**
 * Starts `btrfs receive dir`; the caller writes the send stream into `.stdin` and awaits
 * `.done`. `-e` makes receive stop at the stream's END command, so that a following stream
 * can be fed separately.
 */
export function receive(dir: string, signal?: AbortSignal): { stdin: Writable; done: Promise<void> } {
  const args = ['receive', '-e', dir];
  const child = execa('btrfs', args, {
    stdin: 'pipe',
    stdout: 'ignore',
    buffer: { stderr: true },
    cancelSignal: signal,
  });
  const done = child.then(
    () => undefined,
    (err) => {
      if (signal?.aborted) throw signal.reason;
      throw btrfsError(args, err);
    },
  );
  return { stdin: child.stdin as Writable, done };
}

/**
 * The subvolumes directly inside subvolume `p` (their paths relative to it), from one `btrfs
 * subvolume list -o` (paths from the filesystem's top level) and, only when it lists any (rare:
 * a backup asks each volume), its own path from `show`.
 */
const stripListPath = (s: string) => s.replace(/^<FS_TREE>\/?/, '').replace(/^\/+/, '');

async function childSubvolumes(p: string, signal?: AbortSignal): Promise<string[]> {
  const strip = stripListPath;
  const list = await btrfs(['subvolume', 'list', '-o', p], signal);
  const listed = list.split('\n').map((line) => /^ID \d+ gen \d+ top level \d+ path (.*)$/.exec(line)?.[1]);
  if (!listed.some((l) => l !== undefined)) return [];
  const top = strip((await btrfs(['subvolume', 'show', p], signal)).split('\n')[0]!.trim());
  const out: string[] = [];
  for (const l of listed) {
    if (l === undefined) continue;
    const full = strip(l);
    const rel = top === '' ? full : full.startsWith(top + '/') ? full.slice(top.length + 1) : undefined;
    if (rel) out.push(rel);
  }
  return out;
}

/** A line of `btrfs subvolume list -a -u -q`: ID, its parent's ID (top level), parent UUID, UUID, path from the top level. */
const UUID_LIST_LINE = /^ID (\d+) gen \d+ top level (\d+) parent_uuid (\S+)\s+uuid (\S+) path (.*)$/;

/**
 * childSubvolumes of a container's live volumes from one `btrfs subvolume list -a -u -q` of their
 * filesystem, rather than two processes each (-a: every path from the filesystem's top level, some
 * behind `<FS_TREE>/`). Each live volume is found by UUID, not by path (a path from the top level
 * says nothing of where a filesystem mounted with subvol= shows it): it is the parent (snapshot
 * source) of the volume's snapshot, whose UUID the record holds. Its children are the subvolumes
 * whose parent ID is its. undefined for a volume not found so (its snapshot on another
 * filesystem, its live volume replaced since), and for all when the list fails: ask
 * childSubvolumes of those.
 */
export async function childSubvolumesOfAll(
  volumes: { live: string; snapshotUuid: string }[],
  signal?: AbortSignal,
): Promise<(string[] | undefined)[]> {
  if (volumes.length === 0) return [];
  let listed: { id: string; parent: string; parentUuid: string; uuid: string; path: string }[];
  try {
    listed = (await btrfs(['subvolume', 'list', '-a', '-u', '-q', volumes[0]!.live], signal))
      .split('\n')
      .map((line) => UUID_LIST_LINE.exec(line))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => ({ id: m[1]!, parent: m[2]!, parentUuid: m[3]!, uuid: m[4]!, path: stripListPath(m[5]!) }));
  } catch {
    signal?.throwIfAborted();
    return volumes.map(() => undefined);
  }
  return volumes.map((v) => {
    const snap = listed.find((l) => l.uuid === v.snapshotUuid);
    const self = snap && snap.parentUuid !== '-' ? listed.find((l) => l.uuid === snap.parentUuid) : undefined;
    if (!self || self.path === '') return undefined;
    return listed.filter((l) => l.parent === self.id && l.path.startsWith(self.path + '/')).map((l) => l.path.slice(self.path.length + 1));
  });
}

interface NestedSubvolume {
  /** Path relative to the volume's root. */
  path: string;
  /** The nested subvolume's root directory, as it is in the live volume. */
  mode: number;
  uid: number;
  gid: number;
}

/**
 * The subvolumes directly inside the live volume `live` that its snapshot `snap` holds only as
 * empty directories: `btrfs send` does not cross into them. Cheap: one `btrfs subvolume list -o`
 * (children of the volume, paths from the filesystem's top level), or `children` when the caller
 * has them (childSubvolumesOfAll), and a stat per child; one created after the snapshot (no
 * placeholder in it) is not counted.
 */
export async function nestedSubvolumes(live: string, snap: string, signal?: AbortSignal, children?: string[]): Promise<NestedSubvolume[]> {
  const out: NestedSubvolume[] = [];
  for (const rel of children ?? (await childSubvolumes(live, signal))) {
    const [inSnap, inLive] = await Promise.all([lstat(path.join(snap, rel)).catch(() => undefined), lstat(path.join(live, rel)).catch(() => undefined)]);
    if (!inSnap?.isDirectory() || inSnap.ino !== EMPTY_SUBVOL_DIR_INO) continue;
    out.push({
      path: rel,
      mode: inLive?.isDirectory() ? inLive.mode & 0o7777 : 0o755,
      uid: inLive?.uid ?? 0,
      gid: inLive?.gid ?? 0,
    });
  }
  return out.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/**
 * `btrfs inspect-internal inode-resolve INO ROOT`: every name of an inode, as raw stdout bytes
 * (paths may be any bytes); undefined when btrfs cannot resolve it.
 */
export async function inodeResolve(root: string, ino: bigint, signal?: AbortSignal): Promise<Buffer | undefined> {
  const r = await execa('btrfs', ['inspect-internal', 'inode-resolve', String(ino), root], {
    stdin: 'ignore',
    encoding: 'buffer',
    reject: false,
    cancelSignal: signal,
  });
  return r.exitCode === 0 ? Buffer.from(r.stdout as Uint8Array) : undefined;
}

/**
 * A metadata-only send (`btrfs send --no-data`) at the lowest CPU priority, for estimates that
 * must take nothing from the real work; `done` rejects when it fails. Its stderr is dropped.
 */
export async function sendMetadataNice(
  snap: string,
  opts: { parent?: string; signal?: AbortSignal } = {},
): Promise<{ stdout: Readable; done: Promise<void> }> {
  const { spawn } = await import('node:child_process');
  const { setPriority } = await import('node:os');
  const args = ['send', '-q', '--no-data', ...(opts.parent ? ['-p', opts.parent] : []), snap];
  const child = spawn('btrfs', args, { stdio: ['ignore', 'pipe', 'ignore'], signal: opts.signal });
  const done = new Promise<void>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => (code === 0 ? resolve() : reject(new Error(`btrfs ${args.join(' ')} exited with ${code}`))));
  });
  done.catch(() => {});
  try {
    if (child.pid !== undefined) setPriority(child.pid, 19);
  } catch {
    // not allowed (another user's process cannot be reniced): run as it is
  }
  return { stdout: child.stdout, done };
}
