// The LXC container config: which BTRFS volumes a container has and where they are mounted.
// LXC 2 spells the keys lxc.rootfs / lxc.utsname / lxc.network.*, LXC 3 lxc.rootfs.path /
// lxc.uts.name / lxc.net.0.*; both are read. Lines are kept as written so a rewrite (restore
// under a new name) changes only what it must.
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { SbkError, ExitCode } from './errors.js';

export interface ConfigLine {
  raw: string;
  key?: string;
  value?: string;
}

export interface LxcConfig {
  lines: ConfigLine[];
}

export function parseLxcConfig(text: string): LxcConfig {
  const lines: ConfigLine[] = [];
  for (const raw of text.split('\n')) {
    const t = raw.trim();
    if (t === '' || t.startsWith('#')) {
      lines.push({ raw });
      continue;
    }
    const eq = t.indexOf('=');
    if (eq < 0) {
      lines.push({ raw });
      continue;
    }
    lines.push({ raw, key: t.slice(0, eq).trim(), value: t.slice(eq + 1).trim() });
  }
  // split() leaves one empty element after a final newline; keep the text round-trippable.
  return { lines };
}

export function serializeLxcConfig(cfg: LxcConfig): string {
  return cfg.lines.map((l) => l.raw).join('\n');
}

export function configValues(cfg: LxcConfig, key: string): string[] {
  return cfg.lines.filter((l) => l.key === key).map((l) => l.value ?? '');
}

export function configValue(cfg: LxcConfig, ...keys: string[]): string | undefined {
  for (const k of keys) {
    const v = configValues(cfg, k);
    if (v.length) return v[v.length - 1];
  }
  return undefined;
}

/** fstab-style fields: white space separates, `\040` and friends are octal escapes. */
export function splitFstabFields(value: string): string[] {
  return value
    .split(/[ \t]+/)
    .filter(Boolean)
    .map((f) => f.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8))));
}

/** `btrfs:/path`, `dir:/path` or `/path` → `/path`. Other backends (overlay, lvm …) are not BTRFS. */
export function rootfsPath(value: string): string {
  const m = /^([a-z]+):(.*)$/.exec(value);
  if (!m) return value;
  if (m[1] === 'btrfs' || m[1] === 'dir') return m[2]!;
  throw new SbkError(`lxc.rootfs backend '${m[1]}' is not supported (only btrfs or dir on BTRFS)`, ExitCode.badInput);
}

export interface VolumeRef {
  /** Volume name: the subvolume's directory name inside the container directory (rootfs, home …). */
  name: string;
  /** Where the subvolume is on the host, as the config says. */
  source: string;
  /** Where it is mounted inside the container: `/` for rootfs, `/home` … */
  mount: string;
}

export interface ConfigVolumes {
  volumes: VolumeRef[];
  /** Mount entries that are not volumes of this container (proc, devices, host binds). */
  skipped: { source: string; reason: string }[];
}

/**
 * Lists the container's volumes from its config. `containerDir` is where the container lives now
 * (`<lxc-dir>/<name>`); a config written for another lxc-dir (paths of a copied container) is
 * mapped by the last two path components (`…/<name>/<volume>`).
 */
export function configVolumes(cfg: LxcConfig, containerDir: string): ConfigVolumes {
  const volumes: VolumeRef[] = [];
  const skipped: ConfigVolumes['skipped'] = [];
  const container = path.basename(containerDir);
  const local = (src: string): string | undefined => {
    const abs = path.resolve(containerDir, src);
    if (path.dirname(abs) === containerDir) return abs;
    if (path.basename(path.dirname(abs)) === container) return path.join(containerDir, path.basename(abs));
    return undefined;
  };
  const rootValue = configValue(cfg, 'lxc.rootfs.path', 'lxc.rootfs');
  if (rootValue === undefined || rootValue === '')
    throw new SbkError(`no lxc.rootfs or lxc.rootfs.path in the config of ${containerDir}`, ExitCode.badInput);
  const rootSrc = rootfsPath(rootValue);
  const rootLocal = local(rootSrc);
  if (!rootLocal)
    throw new SbkError(
      `rootfs ${rootSrc} is not inside the container directory ${containerDir}`,
      ExitCode.badInput,
    );
  volumes.push({ name: path.basename(rootLocal), source: rootLocal, mount: '/' });
  const rootMount = configValue(cfg, 'lxc.rootfs.mount');
  for (const entry of configValues(cfg, 'lxc.mount.entry')) {
    const f = splitFstabFields(entry);
    const [src, dest, type, opts] = f;
    if (!src || !dest) {
      skipped.push({ source: entry, reason: 'malformed mount entry' });
      continue;
    }
    if (!src.startsWith('/')) {
      skipped.push({ source: src, reason: `not a path (type ${type ?? '?'})` });
      continue;
    }
    const loc = local(src);
    if (!loc) {
      skipped.push({ source: src, reason: 'outside the container directory' });
      continue;
    }
    if ((opts ?? '').split(',').includes('create=file')) {
      skipped.push({ source: src, reason: 'a file bind mount' });
      continue;
    }
    let inside = dest;
    if (path.isAbsolute(inside)) {
      for (const prefix of [rootMount, rootSrc].filter(Boolean) as string[]) {
        if (inside === prefix || inside.startsWith(prefix + '/')) {
          inside = inside.slice(prefix.length);
          break;
        }
      }
    }
    const mount = path.posix.normalize('/' + inside).replace(/\/+$/, '') || '/';
    volumes.push({ name: path.basename(loc), source: loc, mount });
  }
  const seen = new Set<string>();
  for (const v of volumes) {
    if (seen.has(v.name))
      throw new SbkError(`volume '${v.name}' appears twice in the config of ${containerDir}`, ExitCode.badInput);
    seen.add(v.name);
  }
  return { volumes, skipped };
}

export async function readContainerConfig(containerDir: string): Promise<LxcConfig> {
  let text: string;
  try {
    text = await readFile(path.join(containerDir, 'config'), 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR')
      throw new SbkError(`no container at ${containerDir} (no LXC config there)`, ExitCode.notFound);
    throw err;
  }
  return parseLxcConfig(text);
}
