// The container directory a restore builds (new/ in its temporary directory): the last
// archive's meta files, the live volumes (writable snapshots of the received ones: they carry
// no Received UUID, and the received subvolumes are never flipped writable, as `btrfs property
// set ro false` breaks later incrementals), the mount points of nested subvolumes that were not
// backed up, the LXC config rewritten for its new name or place, and last the modes, owners and
// times of its directories and volume roots.
import { lstat, mkdir, readdir, rm, chmod, chown, utimes, writeFile, readFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import type { ArchiveEntry, VolumeRoot } from '../../formats/archive/archive.js';
import type { ChainId } from '../../formats/archive/links.js';
import { snapshot } from '../../system/btrfs.js';
import { exists } from '../../system/atomic.js';
import {
  parseLxcConfig,
  rewriteConfigForRestore,
  rootfsPath,
  configValue,
  configValues,
  serializeLxcConfig,
  splitFstabFields,
  type LxcConfig,
} from '../../formats/lxc-config.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { Log } from '../../core/log.js';

interface MetaDir {
  rel: string;
  mode: number;
  mtime: Date;
  uid: number;
  gid: number;
}

interface NestedDir {
  volume: string;
  path: string;
  mode: number;
  uid: number;
  gid: number;
}

export class ContainerDir {
  private metaDirs: MetaDir[] = [];
  private readonly isRoot = process.getuid?.() === 0;

  /** `reserved`: a name in the directory that is not the archive's (the replay's volumes being
   *  built): reset() keeps it and a meta file of that name is refused. */
  constructor(
    readonly dir: string,
    private readonly log: Log,
    private readonly signal: AbortSignal,
    private readonly reserved?: string,
  ) {}

  /** Empties it for the next archive: the meta files of the last archive are the ones restored. */
  async reset(): Promise<void> {
    if (this.reserved === undefined) await rm(this.dir, { recursive: true, force: true });
    else for (const n of await readdir(this.dir).catch(() => [])) if (n !== this.reserved) await rm(path.join(this.dir, n), { recursive: true, force: true });
    await mkdir(this.dir, { mode: 0o755, recursive: true });
    this.metaDirs = [];
  }

  /** A meta/ entry of `backup`: a directory (its attributes set at the end) or a file. */
  async writeMeta(e: ArchiveEntry, backup: string): Promise<void> {
    // readArchives has refused absolute paths, `..` and anything but files and directories, and
    // everything below new/ was made here: no symlink can lead a write elsewhere.
    const rel = e.name.replace(/^meta\/?/, '').replace(/\/$/, '');
    const dest = rel === '' ? this.dir : path.join(this.dir, rel);
    const h = e.header;
    if (rel === '' && h.type !== 'directory') throw new SbkError(`${backup}: 'meta' is a file, not a directory`, ExitCode.corrupt);
    if (this.reserved !== undefined && rel.split('/')[0] === this.reserved) throw new SbkError(`${backup}: meta/${rel} has a name sbk keeps for itself`, ExitCode.corrupt);
    const mode = (h.mode ?? (h.type === 'directory' ? 0o755 : 0o644)) & 0o7777;
    if (h.type === 'directory') {
      await mkdir(dest, { recursive: true });
      this.metaDirs.push({ rel, mode, mtime: h.mtime ?? new Date(), uid: h.uid ?? 0, gid: h.gid ?? 0 });
      return;
    }
    await mkdir(path.dirname(dest), { recursive: true });
    if (await exists(dest)) await rm(dest, { recursive: true }); // a later tar entry wins, as in tar
    await pipeline(e.body, createWriteStream(dest, { mode: 0o600, flags: 'wx' }), { signal: this.signal });
    await this.setAttrs(dest, mode, h.mtime, h.uid, h.gid);
  }

  /** The live volumes: writable snapshots of the last archive's received subvolumes. */
  async addVolumes(last: { id: ChainId; received: Map<string, string> }): Promise<void> {
    for (const [volume, sub] of last.received) {
      if (await exists(path.join(this.dir, volume)))
        throw new SbkError(`${last.id.name}: meta/${volume} has the name of volume ${volume}`, ExitCode.corrupt);
      this.signal.throwIfAborted();
      await snapshot(sub, path.join(this.dir, volume), { readonly: false }, this.signal);
    }
    await this.addNestedDirs(last.id, [...last.received.keys()]);
  }

  /** The mount points of the nested subvolumes of `volumes` that were not backed up (see makeNestedDir). */
  async addNestedDirs(id: ChainId, volumes: string[]): Promise<void> {
    for (const n of id.manifest?.nestedSubvolumes ?? []) {
      if (volumes.includes(n.volume)) await this.makeNestedDir(id.name, path.join(this.dir, n.volume), n);
    }
  }

  /**
   * The mount point of a subvolume that was nested in a volume and not backed up: an empty
   * directory with the mode and owner it had. The volume was received from the archive: a symlink
   * or a file on the way is not followed, the directory is then not made (and that is said).
   */
  private async makeNestedDir(backup: string, volumeDir: string, n: NestedDir): Promise<void> {
    const where = `${n.volume}/${n.path}`;
    const parts = n.path.split('/');
    let dir = volumeDir;
    for (const c of parts.slice(0, -1)) {
      dir = path.join(dir, c);
      const st = await lstat(dir).catch(() => undefined);
      if (!st?.isDirectory()) {
        this.log.warn(`${backup}: ${where} was a nested subvolume, not in the backup; ${path.relative(volumeDir, dir)} is not a directory: no empty directory made there`);
        return;
      }
    }
    const dest = path.join(dir, parts[parts.length - 1]!);
    if (await lstat(dest).catch(() => undefined)) return; // the volume has something there already
    // The parent's times are the snapshot's: keep them.
    const parent = await lstat(dir);
    await mkdir(dest);
    if (this.isRoot) await chown(dest, n.uid, n.gid);
    await chmod(dest, n.mode);
    await utimes(dir, parent.atime, parent.mtime);
    this.log.warn(`${backup}: ${where} was a nested subvolume, not in the backup: made an empty directory there (mode ${n.mode.toString(8).padStart(4, '0')})`);
  }

  /**
   * The config of a container restored under a new name or into another LXC dir. `fallbackOwner`
   * names the container when neither a manifest nor the config's own directory does.
   */
  async rewriteConfig(id: ChainId, target: string, name: string, fallbackOwner: string, opts: { plainDirs?: boolean } = {}): Promise<void> {
    const file = path.join(this.dir, 'config');
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      this.log.warn(`${id.name} holds no LXC config (meta/config): restored the volumes only`);
      return;
    }
    const cfg = parseLxcConfig(text);
    const fromDirs: string[] = [];
    if (id.manifest?.source.containerDir) fromDirs.push(id.manifest.source.containerDir);
    let configDir: string | undefined;
    const root = configValue(cfg, 'lxc.rootfs.path', 'lxc.rootfs');
    if (root) {
      try {
        configDir = path.dirname(rootfsPath(root));
        fromDirs.push(configDir);
      } catch {
        // another backend: no path to learn from it
      }
    }
    // Whose config this is: the manifest says; an original Subutai archive has only its file
    // name, which may have been renamed, so there the config's own container directory decides.
    const owner = id.manifest ? id.manifest.container : configDir ? path.basename(configDir) : fallbackOwner;
    const renamed = name !== owner;
    const { config, changes } = rewriteConfigForRestore(cfg, { fromDirs, toDir: target, newName: renamed ? name : undefined, plainDirs: opts.plainDirs });
    await this.warnMissingHostPaths(config, target, name);
    if (changes.length === 0) return;
    for (const c of changes) this.log.verbose(`config: ${c}`);
    await writeFile(file, serializeLxcConfig(config));
  }

  /**
   * A mount entry binding a host path is kept as written but its data is not in the backup: one
   * missing on this host (restored elsewhere, or removed since) keeps LXC from starting the
   * container, unless the entry is `optional`. Said now rather than at the next lxc-start.
   */
  private async warnMissingHostPaths(cfg: LxcConfig, target: string, name: string): Promise<void> {
    for (const entry of configValues(cfg, 'lxc.mount.entry')) {
      const [src, dest, , opts] = splitFstabFields(entry);
      if (!src?.startsWith('/') || !dest || (opts ?? '').split(',').includes('optional')) continue;
      if (src === target || src.startsWith(target + '/')) continue;
      if (!(await lstat(src).catch(() => undefined)))
        this.log.warn(
          `${name}: lxc.mount.entry binds ${src} (at ${dest}), a host path that is not in the backup and does not exist on this host: LXC will not start ${name} until it does`,
        );
    }
  }

  /** Directory modes and times last (writing into a directory changes its mtime), then the volume roots. */
  async seal(id: ChainId): Promise<void> {
    for (const d of [...this.metaDirs].sort((a, b) => b.rel.length - a.rel.length))
      await this.setAttrs(d.rel === '' ? this.dir : path.join(this.dir, d.rel), d.mode, d.mtime, d.uid, d.gid);
    // Each volume's root as the snapshot had it (the manifest says; older archives do not).
    for (const v of id.manifest?.volumes ?? []) if (v.root) await this.setRoot(path.join(this.dir, v.name), v.root);
  }

  private async setAttrs(p: string, mode: number, mtime: Date | undefined, uid: number | undefined, gid: number | undefined): Promise<void> {
    if (this.isRoot) await chown(p, uid ?? 0, gid ?? 0);
    await chmod(p, mode);
    if (mtime) await utimes(p, mtime, mtime);
  }

  /** Mode, owner and times (to the nanosecond: touch(1), as utimes(2) from Node rounds to a double). */
  private async setRoot(p: string, root: VolumeRoot): Promise<void> {
    if (this.isRoot) await chown(p, root.uid, root.gid);
    await chmod(p, root.mode);
    for (const [flag, t] of [['-a', root.atime], ['-m', root.mtime]] as const)
      await execa('touch', ['-h', flag, '-d', `@${t}`, '--', p], { stdin: 'ignore', cancelSignal: this.signal });
  }
}
