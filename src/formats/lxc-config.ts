// The LXC container config: which BTRFS volumes a container has and where they are mounted.
// LXC 2 spells the keys lxc.rootfs / lxc.utsname / lxc.network.* / lxc.id_map, LXC 3+
// lxc.rootfs.path / lxc.uts.name / lxc.net.0.* / lxc.idmap; both are read. Values are read as LXC
// reads them (trimmed, one pair of matching quotes removed: LXC 5 writes `lxc.uts.name = "c1"`).
// Lines are kept as written so a rewrite (restore under a new name) changes only what it must.
import path from 'node:path';
import { readFile } from 'node:fs/promises';
import { SbkError, ExitCode } from '../core/errors.js';

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

/**
 * A value as LXC reads it: one pair of matching quotes (" or ') around it removed, as LXC's
 * parse_line does; `quote` is what was removed, for writing a new value the same way.
 */
export function unquote(value: string): { inner: string; quote: string } {
  const q = value[0];
  if ((q === '"' || q === "'") && value.length > 1 && value.endsWith(q)) return { inner: value.slice(1, -1), quote: q };
  return { inner: value, quote: '' };
}

/** Every value of `key`, in order, as LXC reads them (unquoted). */
export function configValues(cfg: LxcConfig, key: string): string[] {
  return cfg.lines.filter((l) => l.key === key).map((l) => unquote(l.value ?? '').inner);
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
  const rootValue = configValue(cfg, 'lxc.rootfs.path', 'lxc.rootfs');
  if (rootValue === undefined || rootValue === '')
    throw new SbkError(`no lxc.rootfs or lxc.rootfs.path in the config of ${containerDir}`, ExitCode.badInput);
  const rootSrc = rootfsPath(rootValue);
  // The directory the config was written for: the rootfs's, when that is `…/<name>/`. Only
  // sources there (or here) are the container's: a host path that merely has a directory of the
  // container's name in it (`/srv/<name>/x`) is not.
  const here = path.resolve(containerDir);
  const rootDir = path.dirname(path.resolve(here, rootSrc));
  const written = path.basename(rootDir) === container ? rootDir : here;
  const local = (src: string): string | undefined => {
    const abs = path.resolve(here, src);
    const dir = path.dirname(abs);
    if (dir === here || dir === written) return path.join(here, path.basename(abs));
    return undefined;
  };
  const rootLocal = local(rootSrc);
  if (!rootLocal)
    throw new SbkError(
      `rootfs ${rootSrc} is not inside the container directory ${containerDir}`,
      ExitCode.badInput,
    );
  volumes.push({ name: path.basename(rootLocal), source: rootLocal, mount: '/' });
  const rootMount = configValue(cfg, 'lxc.rootfs.mount');
  // Sources that are paths but not volumes: why, once every volume is known.
  const notVolumes: { at: number; source: string }[] = [];
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
      notVolumes.push({ at: skipped.length, source: src });
      skipped.push({ source: src, reason: '' });
      continue;
    }
    if ((opts ?? '').split(',').includes('create=file')) {
      skipped.push({ source: src, reason: 'a file bind mount: not a volume' });
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
  for (const n of notVolumes) skipped[n.at]!.reason = whyNotAVolume(n.source, [...new Set([here, written])], volumes);
  const seen = new Set<string>();
  for (const v of volumes) {
    if (seen.has(v.name))
      throw new SbkError(`volume '${v.name}' appears twice in the config of ${containerDir}`, ExitCode.badInput);
    seen.add(v.name);
  }
  return { volumes, skipped };
}

/**
 * Why a mount entry's source path is not a volume: a path inside a volume is backed up with it;
 * one deeper in the container directory (only subvolumes directly in it are volumes) or on the
 * host is not in the backup at all.
 */
function whyNotAVolume(src: string, containerDirs: string[], volumes: VolumeRef[]): string {
  const abs = path.resolve(containerDirs[0]!, src);
  for (const dir of containerDirs) {
    const rel = path.relative(dir, abs);
    if (rel === '') return 'the container directory itself: not a volume (its subvolumes are)';
    if (rel === '..' || rel.startsWith('../') || path.isAbsolute(rel)) continue;
    const top = rel.split(path.sep)[0]!;
    if (volumes.some((v) => v.name === top)) return `inside volume ${top}: backed up with it`;
    return 'inside the container directory but not a subvolume directly in it: not a volume (at most its small files are kept as meta files)';
  }
  return 'a host path outside the container directory: not in the backup';
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

// ---------------------------------------------------------------------------------------------
// Restoring a config under a new name or into another LXC dir (sbk-unpack).

export interface RestoreRewrite {
  /** Container directories the config's paths may start with (where the backup was made). */
  fromDirs: string[];
  /** Where the container is restored: `<lxc-dir>/<name>`. */
  toDir: string;
  /** A new name: sets lxc.utsname / lxc.uts.name and gives every network a fresh MAC. */
  newName?: string;
  /** Source of random bytes for MACs (tests pass a fixed one). */
  random?: (n: number) => Buffer;
  /** The volumes are plain directories (restored by replay, not on BTRFS): the rootfs's
   *  `btrfs:` backend becomes `dir:` (lxc.rootfs.backend = dir for LXC 2). */
  plainDirs?: boolean;
}

export interface RestoreRewriteResult {
  config: LxcConfig;
  /** One line per change, for -v. */
  changes: string[];
}

/** fstab's octal escapes for the characters that would end a field (inverse of splitFstabFields). */
const fstabEscape = (s: string) => s.replace(/[ \t\n\\]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'));

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** A fresh locally administered unicast MAC: bit 0x02 of the first octet set, bit 0x01 clear. */
export function randomLocalMac(random: (n: number) => Buffer): string {
  const b = Buffer.from(random(6));
  b[0] = (b[0]! & 0xfc) | 0x02;
  return [...b].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

/** The host-side veth name for a MAC: `veth` + its last three octets (10 characters, < IFNAMSIZ). */
export function vethPairName(mac: string): string {
  return 'veth' + mac.split(':').slice(3).join('').toLowerCase();
}

const NET_KEY = /^lxc\.(network|net)(?:\.(\d+))?\.(type|hwaddr|veth\.pair)$/;

/**
 * Rewrites a restored container's config: every path under a source container directory is
 * moved to `toDir` (rootfs, mount entries, fstab, log files, hooks …); for a new name also the
 * host name, a fresh MAC per network and the veth pair name derived from that new MAC (the
 * original tool derived it from the old one, so the copy's interface clashed with the source's).
 * Lines not concerned are kept byte for byte.
 */
export function rewriteConfigForRestore(cfg: LxcConfig, opts: RestoreRewrite): RestoreRewriteResult {
  const changes: string[] = [];
  // Longest first, so `/a/c1-old` is not rewritten as `/a/c1` + `-old`. A root or relative
  // "directory" would rewrite unrelated paths: never used.
  const from = [...new Set(opts.fromDirs.map((d) => path.posix.normalize(d).replace(/\/+$/, '')))]
    .filter((d) => d.startsWith('/') && d.length > 1 && d !== opts.toDir)
    .sort((a, b) => b.length - a.length);
  // A path starts a value, follows white space or a backend prefix (`btrfs:`), and ends at a
  // `/`, white space or the end. fstab fields escape spaces as \040.
  const patterns = from.flatMap((d) => {
    const forms = [d, d.replace(/ /g, '\\040')];
    return [...new Set(forms)].map((f) => ({
      re: new RegExp(`(^|[\\s:=,])${escapeRe(f)}(?=$|[\\s/,])`, 'g'),
      to: f === d ? opts.toDir : opts.toDir.replace(/ /g, '\\040'),
    }));
  });

  // Networks: LXC 2 starts a new one at each lxc.network.type, LXC 3 numbers them (lxc.net.N.*).
  // Web Crypto is global in Node 20: no import needed.
  const random = opts.random ?? ((n: number) => Buffer.from(globalThis.crypto.getRandomValues(new Uint8Array(n))));
  const macs = new Map<string, string>();
  let unnumbered = -1;
  const netOf = (key: string): string | undefined => {
    const m = NET_KEY.exec(key);
    if (!m) return undefined;
    if (m[2] !== undefined) return `${m[1]}.${m[2]}`;
    if (m[3] === 'type') unnumbered++;
    return `${m[1]}#${Math.max(unnumbered, 0)}`;
  };
  const macFor = (net: string) => {
    let mac = macs.get(net);
    if (!mac) {
      mac = randomLocalMac(random);
      macs.set(net, mac);
    }
    return mac;
  };

  const lines = cfg.lines.map((line): ConfigLine => {
    if (line.key === undefined || line.value === undefined) return line;
    const key = line.key;
    // The value LXC reads: quotes stay around whatever it becomes.
    const { inner: before, quote } = unquote(line.value);
    let value = before;
    // A mount entry is fstab-style: white space in the new directory must be escaped there, or
    // LXC (and configVolumes) would split the path into fields.
    const to = (p: { to: string }) => (key === 'lxc.mount.entry' ? fstabEscape(opts.toDir) : p.to);
    for (const p of patterns) value = value.replace(p.re, (_m, pre: string) => pre + to(p));
    if (opts.plainDirs) {
      if ((key === 'lxc.rootfs.path' || key === 'lxc.rootfs') && value.startsWith('btrfs:')) value = 'dir:' + value.slice('btrfs:'.length);
      if (key === 'lxc.rootfs.backend' && value === 'btrfs') value = 'dir';
    }
    if (opts.newName !== undefined) {
      if (key === 'lxc.utsname' || key === 'lxc.uts.name') value = opts.newName;
      const net = netOf(key);
      if (net !== undefined && key.endsWith('.hwaddr')) value = macFor(net);
      if (net !== undefined && key.endsWith('.veth.pair')) value = vethPairName(macFor(net));
    }
    if (value === before) return line;
    changes.push(`${key}: ${before} -> ${value}`);
    const written = quote + value + quote;
    const eq = line.raw.indexOf('=');
    const after = /^\s*/.exec(line.raw.slice(eq + 1))![0];
    const trailing = /\s*$/.exec(line.raw)![0]; // a CRLF file's \r too
    return { raw: line.raw.slice(0, eq + 1) + after + written + trailing, key, value: written };
  });
  return { config: { lines }, changes };
}
