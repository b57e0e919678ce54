// What "meta" is: the files beside the volumes in <lxc-dir>/<c>/ that a restore needs (the LXC
// config, fstab, keys and such small files). One rule, shared by sbk-send (what it archives) and
// every reader (what it accepts), so that sbk-pack can never refuse what sbk-send wrote.
// Left out, and said with -v: hidden names, files the config names as logs, any subvolume (with
// everything below it), anything but regular files and directories, a file over META_FILE_MAX,
// and whatever would take the meta past META_TOTAL_MAX. The meta never fails or bloats a backup.
// sbk-send's side is collectMeta (send.ts); the readers' side is metaEntryRefusal (archive.ts).
import path from 'node:path';
import { configValues, parseLxcConfig } from '../lxc-config.js';

/** The largest meta file sbk-send archives and a reader of an sbk archive accepts. */
export const META_FILE_MAX = 1024 * 1024;
/** The most the meta entries of one archive may take, tar headers and padding included. */
export const META_TOTAL_MAX = 8 * 1024 * 1024;
/** Archives of the original tool copied every file: readers allow them this much per file. */
export const LEGACY_META_FILE_MAX = 64 * 1024 * 1024;

/** A safe relative path under meta/: no absolute path, no `..`, no empty or odd components. */
export function isSafeMetaPath(rel: string): boolean {
  if (rel === '' || rel.startsWith('/') || rel.includes('\0') || rel.includes('\\')) return false;
  return rel.split('/').every((c) => c !== '' && c !== '.' && c !== '..');
}

/** Bytes a meta entry takes in the tar: a 512-byte header and the data padded to 512. */
export const metaEntryCost = (size: number): number => 512 + Math.ceil(size / 512) * 512;

/**
 * The reader's side of the rule: why a meta entry of `size` bytes, after `total` bytes of meta
 * entries, is refused (undefined: accepted).
 */
export function metaEntryRefusal(size: number, total: number, legacy: boolean): string | undefined {
  if (legacy) return size > LEGACY_META_FILE_MAX ? `is larger than ${LEGACY_META_FILE_MAX} bytes` : undefined;
  if (size > META_FILE_MAX) return `is too large (${size} bytes; meta files are at most ${META_FILE_MAX})`;
  if (total + metaEntryCost(size) > META_TOTAL_MAX) return `takes the meta entries past ${META_TOTAL_MAX} bytes`;
  return undefined;
}

/** Config keys that name log files LXC writes (LXC 2 and LXC 3+ spellings). */
export const LOG_KEYS = ['lxc.logfile', 'lxc.log.file', 'lxc.console.logfile'] as const;

/**
 * Paths (relative to the container directory) that the config names as logs, with the key.
 * Paths under the directory the config was written for (a copied container) count too.
 */
export function configLogFiles(configText: string, containerDir: string): Map<string, string> {
  const cfg = parseLxcConfig(configText);
  const out = new Map<string, string>();
  const here = path.resolve(containerDir);
  for (const key of LOG_KEYS) {
    for (const v of configValues(cfg, key)) {
      if (v === '') continue;
      const rel = path.relative(here, path.resolve(here, v));
      if (rel === '' || rel.startsWith('..') || path.isAbsolute(rel)) continue;
      out.set(rel, key);
      // LXC rotates the console log to <file>.1 (lxc.console.rotate).
      out.set(`${rel}.1`, key);
    }
  }
  return out;
}

