// LXC on this host: the containers of an LXC dir and their volumes (from each config), and what
// LXC says of a container: running, frozen, stopped … Asked of `lxc-info`, which reaches the
// container's monitor through its command socket (abstract `@<lxcpath>/<name>/command`). Used to
// keep sbk from pulling volumes from under a running container (sbk-unpack --force); sbk-snap may
// use it to freeze or stop one.
import { readdir, readFile, realpath } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { SbkError, ExitCode, describeSystemError } from '../core/errors.js';
import { checkContainerName, isValidVolumeName, type Dirs } from '../core/layout.js';
import type { Log } from '../core/log.js';
import { configVolumes, readContainerConfig, type VolumeRef } from '../formats/lxc-config.js';
import { requireSubvolume, subvolumeInfo } from './btrfs.js';
import { exists } from './atomic.js';

export interface LxcStateAnswer {
  /** As lxc-info prints it: STOPPED, STARTING, RUNNING, STOPPING, ABORTING, FREEZING, FROZEN, THAWED. */
  state: string;
  /** The LXC path (-P) under which LXC knows it. */
  lxcPath: string;
}

/** Abstract unix socket names bound on this host (their `@…` form), from /proc/net/unix. */
async function abstractSockets(): Promise<string[]> {
  const text = await readFile('/proc/net/unix', 'utf8').catch(() => '');
  return text
    .split('\n')
    .map((l) => l.split(' ').slice(7).join(' '))
    .filter((n) => n.startsWith('@'));
}

const real = (p: string) => realpath(p).catch(() => path.resolve(p));

/**
 * The LXC paths that may name `lxcDir`: itself, its real path, and the path of any command
 * socket of a container `name` whose directory is the same (a container started through a
 * symlink or another spelling of the path has its socket there, and lxc-info must be asked so).
 */
async function candidatePaths(lxcDir: string, name: string, sockets: string[]): Promise<string[]> {
  const want = await real(lxcDir);
  const paths = new Set([path.resolve(lxcDir), want]);
  const tail = `/${name}/command`;
  for (const s of sockets) {
    if (!s.endsWith(tail)) continue;
    const p = s.slice(1, -tail.length);
    if (p.startsWith('/') && (await real(p)) === want) paths.add(p);
  }
  return [...paths];
}

/** What LXC says of a container: its state, or that LXC is not installed here (no lxc-info). */
export type LxcStateQuery = LxcStateAnswer | { state: 'NO-LXC' } | undefined;

/** The state of container `name` of `lxcDir` as LXC reports it, or undefined when LXC is not installed or knows no such container. */
export async function lxcContainerState(lxcDir: string, name: string, signal?: AbortSignal): Promise<LxcStateAnswer | undefined> {
  const s = await queryContainerState(lxcDir, name, signal);
  return s && 'lxcPath' in s ? s : undefined;
}

/**
 * The state of container `name` of `lxcDir` as LXC reports it; `{ state: 'NO-LXC' }` when LXC is
 * not installed (then no container runs through it), undefined when LXC knows no such
 * container. A container whose config LXC cannot load (edited since it started) but whose
 * command socket is bound is reported as RUNNING: it is there, whatever its config says now.
 */
export async function queryContainerState(lxcDir: string, name: string, signal?: AbortSignal): Promise<LxcStateQuery> {
  const sockets = await abstractSockets();
  let found: LxcStateAnswer | undefined;
  for (const p of await candidatePaths(lxcDir, name, sockets)) {
    const r = await execa('lxc-info', ['-P', p, '-n', name, '-s', '-H'], {
      reject: false,
      stdin: 'ignore',
      encoding: 'utf8',
      cancelSignal: signal,
      env: { LC_ALL: 'C' },
    });
    if ((r as { code?: string }).code === 'ENOENT') return { state: 'NO-LXC' }; // lxc-info is not installed
    signal?.throwIfAborted();
    if (r.exitCode === 0) {
      const state = r.stdout.trim().split('\n').pop()!.trim();
      if (state !== 'STOPPED') return { state, lxcPath: p };
      found ??= { state, lxcPath: p };
      continue;
    }
    if (/doesn't exist/.test(r.stderr)) continue;
    if (sockets.includes(`@${p}/${name}/command`)) return { state: 'RUNNING', lxcPath: p };
    // LXC cannot load its config and no monitor listens: it cannot be running.
    found ??= { state: 'STOPPED', lxcPath: p };
  }
  return found;
}

/** Any state but STOPPED: the container's volumes are (or are about to be) in use. */
const isActive = (a: LxcStateAnswer | undefined): a is LxcStateAnswer => a !== undefined && a.state !== 'STOPPED';

/**
 * Throws (exit 6, conflict) while LXC reports container `name` of `lxcDir` anything but STOPPED:
 * replacing or removing its volumes would pull them from under it.
 */
export async function refuseIfActive(lxcDir: string, name: string, doing: string, signal?: AbortSignal): Promise<void> {
  const a = await lxcContainerState(lxcDir, name, signal);
  if (!isActive(a)) return;
  throw new SbkError(
    `container ${name} is ${a.state}: not ${doing} its volumes under it; stop it first (lxc-stop -P ${a.lxcPath} -n ${name})`,
    ExitCode.conflict,
  );
}

// ---------------------------------------------------------------------------------------------
// Containers of an LXC dir and their volumes (from each config)

export interface ContainerVolumes {
  container: string;
  containerDir: string;
  volumes: VolumeRef[];
  skipped: { source: string; reason: string }[];
}

/** Reads a container's volumes from its config and checks that each is a BTRFS subvolume. */
export async function containerVolumes(dirs: Dirs, container: string): Promise<ContainerVolumes> {
  checkContainerName(container);
  const containerDir = path.join(dirs.lxcDir, container);
  const cfg = await readContainerConfig(containerDir);
  const { volumes, skipped } = configVolumes(cfg, containerDir);
  for (const v of volumes) {
    // Volume names become archive entry names (`<volume>.delta`): refuse what the format cannot hold
    // here, before any snapshot is made, rather than at sbk-send.
    if (!isValidVolumeName(v.name))
      throw new SbkError(
        `volume '${v.name}' of ${container} has a name sbk cannot archive (letters, digits and _ . + - only; not 'meta')`,
        ExitCode.badInput,
      );
    await requireSubvolume(v.source, `volume ${v.name} of ${container}:`).catch((err: unknown) => {
      if (!(err instanceof SbkError) || !err.message.endsWith('is not a BTRFS subvolume')) throw err;
      // A plain directory named by the config (a mount entry, or a dir-backed rootfs): say what to do.
      throw new SbkError(
        `${err.message}: only subvolumes are backed up as volumes; make it one (btrfs subvolume create, then move its files in)` +
          (v.mount === '/' ? '' : ' or bind it in from outside the container directory'),
        err.exitCode,
      );
    });
  }
  return { container, containerDir, volumes, skipped };
}

export interface FoundContainers {
  /** Containers that can be backed up, in name order. */
  names: string[];
  /** Containers (directories with an LXC config) that cannot be backed up, and why. */
  unusable: { name: string; error: SbkError }[];
  /** Subutai templates (see isTemplate), in name order: not in `names`. */
  templates: string[];
}

/**
 * A Subutai template: its root file system is a read-only subvolume (Subutai makes a template's
 * rootfs read-only; containers are writable clones of it). Never a running container, and
 * nothing of its own to back up.
 */
async function isTemplate(cv: ContainerVolumes): Promise<boolean> {
  const root = cv.volumes.find((v) => v.mount === '/');
  return root !== undefined && (await subvolumeInfo(root.source)).readonly;
}

/**
 * Containers in the LXC dir: directories with a config whose volumes are all subvolumes, the
 * Subutai templates among them apart. A
 * directory with a config that cannot be backed up (a volume that is a plain directory, a
 * rootfs on another backend …) is a container all the same: it is returned in `unusable`, for
 * the caller to report, never dropped in silence (a cron job would lose its backups for ever).
 * Directories without a config are not containers (said with -v).
 */
export async function findContainers(dirs: Dirs, log: Log): Promise<FoundContainers> {
  let entries;
  try {
    entries = await readdir(dirs.lxcDir, { withFileTypes: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      throw new SbkError(`LXC directory ${dirs.lxcDir} does not exist`, ExitCode.notFound);
    throw err;
  }
  const found: FoundContainers = { names: [], unusable: [], templates: [] };
  for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (!e.isDirectory() || e.name.startsWith('.')) continue;
    if (path.join(dirs.lxcDir, e.name) === dirs.backupDir || e.name === 'backups') continue;
    if (!(await exists(path.join(dirs.lxcDir, e.name, 'config')))) {
      log.verbose(`skipping ${e.name}: no LXC config in it (not a container)`);
      continue;
    }
    try {
      const cv = await containerVolumes(dirs, e.name);
      (await isTemplate(cv) ? found.templates : found.names).push(e.name);
    } catch (err) {
      const error =
        err instanceof SbkError
          ? err
          : (describeSystemError(err, path.join(dirs.lxcDir, e.name)) ?? new SbkError((err as Error).message, ExitCode.failure, { cause: err }));
      found.unusable.push({ name: e.name, error });
    }
  }
  return found;
}
