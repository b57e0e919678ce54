// A container's tree as seen from inside it, read from a container directory that a restore or a
// replay built (`<dir>/<volume>/…` plus the meta files): rootfs at `/`, every other volume at
// its mount point from the config's mount entries. Walked depth-first in byte order of names,
// each file's metadata from lstat, overridden by the replay's overlay (what the tree on disk
// could not hold when it was built without root). `--path` selects subtrees (selection.ts).
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import type { BigIntStats } from 'node:fs';
import path from 'node:path';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { Log } from '../../core/log.js';
import { configValue, configVolumes, parseLxcConfig, rootfsPath } from '../../formats/lxc-config.js';

export type { MetaOverlayEntry, MetaOverlay, ReplayResult } from './replay/replay.js';
import type { MetaOverlay, MetaOverlayEntry, ReplayResult } from './replay/replay.js';
/** Builds a container directory at `dir` (which does not exist yet) from the chain. */
export type TreeProducer = (dir: string) => Promise<ReplayResult>;

export type FileKind = 'file' | 'dir' | 'symlink' | 'chr' | 'blk' | 'fifo' | 'sock';

/** A volume and where the container sees it. */
export interface Mount {
  volume: string;
  /** `/`, `/home` … */
  mount: string;
}

export interface TreeEntry {
  /** The path inside the container: `/`, `/etc/hostname` (raw bytes). */
  path: Buffer;
  /** Where it is on this host. */
  source: Buffer;
  volume: string;
  /** Relative to the volume's root ('' for the root). */
  rel: Buffer;
  kind: FileKind;
  /** Permission bits (07777). */
  mode: number;
  uid: number;
  gid: number;
  size: bigint;
  /** 512-byte blocks allocated. */
  blocks: bigint;
  nlink: bigint;
  dev: bigint;
  ino: bigint;
  rdev: bigint;
  mtimeNs: bigint;
  atimeNs: bigint;
  symlinkTarget?: Buffer;
  /** xattrs the overlay holds for it (the tree's own are read by xattrs.ts). */
  overlayXattrs?: Record<string, Buffer>;
}

const SLASH = 0x2f;
const joinPath = (dir: Buffer, name: Buffer) =>
  dir.length === 1 && dir[0] === SLASH ? Buffer.concat([dir, name]) : Buffer.concat([dir, Buffer.of(SLASH), name]);

function kindOf(st: BigIntStats): FileKind {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'dir';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'chr';
  if (st.isBlockDevice()) return 'blk';
  if (st.isFIFO()) return 'fifo';
  return 'sock';
}

/** The volumes of a container directory and their mount points, from its config. */
export async function containerMounts(dir: string, volumes: string[], log: Log): Promise<Mount[]> {
  const fallback = () => volumes.map((v) => ({ volume: v, mount: v === 'rootfs' ? '/' : `/${v}` }));
  let text: string | undefined;
  try {
    text = await readFile(path.join(dir, 'config'), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  let mounts: Mount[];
  if (text === undefined) {
    log.warn('the backup holds no LXC config: rootfs is taken as /, every other volume as /<volume>');
    mounts = fallback();
  } else {
    const cfg = parseLxcConfig(text);
    try {
      // Read as the config was written (its own container directory), whatever name the
      // directory has here: only names and mount points are taken from it.
      const written = path.dirname(path.resolve(dir, rootfsPath(configValue(cfg, 'lxc.rootfs.path', 'lxc.rootfs') ?? '')));
      mounts = configVolumes(cfg, written).volumes.map((v) => ({ volume: v.name, mount: v.mount }));
    } catch (err) {
      log.warn(`the LXC config names no usable rootfs (${(err as Error).message}): rootfs is taken as /, every other volume as /<volume>`);
      mounts = fallback();
    }
  }
  const have = new Set(volumes);
  const seen = new Set<string>();
  const out: Mount[] = [];
  for (const m of mounts) {
    if (!have.has(m.volume) || seen.has(m.mount)) continue;
    seen.add(m.mount);
    out.push(m);
  }
  for (const v of volumes) if (!out.some((m) => m.volume === v)) log.warn(`volume ${v} is not mounted by the container's config: left out`);
  if (!out.some((m) => m.mount === '/')) throw new SbkError('the container has no volume mounted at / (no rootfs)', ExitCode.badInput);
  return out;
}

/** A container directory seen from inside the container. */
export class ContainerView {
  private readonly byMount = new Map<string, Mount>();

  constructor(
    readonly dir: string,
    readonly mounts: Mount[],
    readonly overlay: MetaOverlay = new Map(),
  ) {
    for (const m of mounts) this.byMount.set(m.mount, m);
  }

  /** Reads one entry: the file at `rel` in `volume`, seen at container path `at`. */
  async entry(at: Buffer, volume: string, rel: Buffer): Promise<TreeEntry> {
    const source = rel.length ? Buffer.concat([Buffer.from(path.join(this.dir, volume) + '/'), rel]) : Buffer.from(path.join(this.dir, volume));
    const st = await lstat(source, { bigint: true });
    const e: TreeEntry = {
      path: at,
      source,
      volume,
      rel,
      kind: kindOf(st),
      mode: Number(st.mode & 0o7777n),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: st.size,
      blocks: st.blocks,
      nlink: st.nlink,
      dev: st.dev,
      ino: st.ino,
      rdev: st.rdev,
      mtimeNs: st.mtimeNs,
      atimeNs: st.atimeNs,
    };
    if (e.kind === 'symlink') e.symlinkTarget = (await readlink(source, { encoding: 'buffer' })) as Buffer;
    const o = this.overlayOf(volume, rel);
    if (o) {
      if (o.uid !== undefined) e.uid = o.uid;
      if (o.gid !== undefined) e.gid = o.gid;
      if (o.mode !== undefined) e.mode = o.mode & 0o7777;
      if (o.kind) {
        e.kind = o.kind;
        e.size = 0n;
      }
      if (o.rdev !== undefined) e.rdev = BigInt(o.rdev);
      if (o.xattrs) e.overlayXattrs = o.xattrs;
    }
    if (e.kind !== 'file' && e.kind !== 'symlink') e.size = 0n;
    return e;
  }

  /** The overlay's entry: keyed by the path's bytes as latin1 characters, as the replay names them. */
  private overlayOf(volume: string, rel: Buffer): MetaOverlayEntry | undefined {
    if (this.overlay.size === 0) return undefined;
    const r = rel.toString('latin1');
    return this.overlay.get(r === '' ? volume : `${volume}/${r}`);
  }

  /** The volume seen at a container path, and the path inside it (the deepest mount wins). */
  locate(at: string): { mount: Mount; rel: string } {
    for (let p = at; ; p = path.posix.dirname(p)) {
      const m = this.byMount.get(p);
      if (m) return { mount: m, rel: at === p ? '' : at.slice(p === '/' ? 1 : p.length + 1) };
      if (p === '/') throw new Error('no volume at /'); // containerMounts made sure there is one
    }
  }

  /** The mount points whose parent directory is `dir` (a container path). */
  mountsIn(dir: Buffer): Mount[] {
    const d = dir.toString('utf8');
    return this.mounts.filter((m) => m.mount !== '/' && path.posix.dirname(m.mount) === d);
  }

  /** The mount point of a whole volume: where walk() starts for it. */
  async root(m: Mount): Promise<TreeEntry> {
    return this.entry(Buffer.from(m.mount, 'utf8'), m.volume, Buffer.alloc(0));
  }

  /**
   * `e` and everything below it, depth-first, names in byte order; a mount point is its volume's
   * root (the directory it covers is not seen, as inside the container). `visited` collects the
   * mount points reached.
   */
  async *walk(e: TreeEntry, visited: Set<string>): AsyncGenerator<TreeEntry> {
    yield e;
    if (e.kind !== 'dir') return;
    const children = new Map<string, () => Promise<TreeEntry>>();
    const onDisk = (await readdir(e.source, { encoding: 'buffer' })) as Buffer[];
    onDisk.sort(Buffer.compare);
    for (const name of onDisk) children.set(name.toString('latin1'), () => this.entry(joinPath(e.path, name), e.volume, e.rel.length ? joinPath(e.rel, name) : name));
    for (const m of this.mountsIn(e.path)) {
      visited.add(m.mount);
      children.set(Buffer.from(path.posix.basename(m.mount), 'utf8').toString('latin1'), () => this.root(m));
    }
    const names = [...children.keys()].sort((a, b) => Buffer.compare(Buffer.from(a, 'latin1'), Buffer.from(b, 'latin1')));
    for (const n of names) yield* this.walk(await children.get(n)!(), visited);
  }
}

/**
 * Hard links: the first path of a file seen under several names (in walk order). Only files with
 * more than one link are held, each with its first path.
 */
export class HardLinks {
  private readonly first = new Map<string, Buffer>();

  /** The path `e` was first seen at, if it is a second name of a file already seen. */
  earlier(e: TreeEntry): Buffer | undefined {
    if (e.kind === 'dir' || e.nlink < 2n) return undefined;
    const key = `${e.dev}:${e.ino}`;
    const seen = this.first.get(key);
    if (!seen) this.first.set(key, e.path);
    return seen;
  }
}

/** Major and minor of a Linux device number (the kernel's encoding, as stat gives it). */
export function deviceNumbers(rdev: bigint): { major: number; minor: number } {
  const major = ((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn);
  const minor = (rdev & 0xffn) | ((rdev >> 12n) & ~0xffn);
  return { major: Number(major), minor: Number(minor) };
}
