// The changelog line format: `<action> <path>`, one change a line, paths escaped to sit on one
// line, in a documented order (man/sbk-changelog.1; man/sbk.7, CHANGELOG). Written by
// sbk-changelog, read back by whoever lists or checks a changelog.
//
// Paths are raw bytes in latin1 strings (one char per byte) until they are escaped for output:
// a name may be any bytes but '/' and NUL, not necessarily UTF-8.

export type Action = 'added' | 'modified' | 'deleted';

/** One changelog entry: `rel` is relative to the volume root ('' is the root), raw bytes. */
export interface Change {
  action: Action;
  rel: string;
  dir: boolean;
}

const C_ESCAPES: Record<number, string> = { 7: '\\a', 8: '\\b', 9: '\\t', 10: '\\n', 11: '\\v', 12: '\\f', 13: '\\r', 27: '\\e' };
const octal = (b: number) => '\\' + b.toString(8).padStart(3, '0');

/** Length of the valid UTF-8 sequence at i (0 if none), rejecting overlongs and surrogates. */
function utf8SeqLen(s: string, i: number): number {
  const b = s.charCodeAt(i);
  const cont = (k: number) => {
    const c = s.charCodeAt(i + k);
    return c >= 0x80 && c <= 0xbf;
  };
  const b1 = s.charCodeAt(i + 1);
  if (b >= 0xc2 && b <= 0xdf) return cont(1) ? 2 : 0;
  if (b >= 0xe0 && b <= 0xef) {
    if (b === 0xe0 && !(b1 >= 0xa0 && b1 <= 0xbf)) return 0;
    if (b === 0xed && !(b1 >= 0x80 && b1 <= 0x9f)) return 0;
    return cont(1) && cont(2) ? 3 : 0;
  }
  if (b >= 0xf0 && b <= 0xf4) {
    if (b === 0xf0 && !(b1 >= 0x90 && b1 <= 0xbf)) return 0;
    if (b === 0xf4 && !(b1 >= 0x80 && b1 <= 0x8f)) return 0;
    return cont(1) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

/**
 * Escapes a path (raw bytes) so that it sits on one line, the way `btrfs receive --dump` does:
 * `\\` for a backslash; `\a \b \e \f \n \r \t \v`; `\ooo` (octal) for any other control byte,
 * DEL, and every byte that is not part of valid UTF-8. Unlike --dump, spaces and printable
 * UTF-8 characters are kept as they are; the C1 controls (U+0080-U+009F) and the line and
 * paragraph separators (U+2028, U+2029) are escaped byte by byte.
 */
export function escapePath(raw: string): string {
  let out = '';
  for (let i = 0; i < raw.length; ) {
    const b = raw.charCodeAt(i);
    if (b < 0x80) {
      out += b === 0x5c ? '\\\\' : b >= 0x20 && b < 0x7f ? raw[i] : (C_ESCAPES[b] ?? octal(b));
      i++;
      continue;
    }
    const n = utf8SeqLen(raw, i);
    if (n === 0) {
      out += octal(b);
      i++;
      continue;
    }
    const seq = raw.slice(i, i + n);
    const ch = Buffer.from(seq, 'latin1').toString('utf8');
    const cp = ch.codePointAt(0)!;
    if (cp <= 0x9f || cp === 0x2028 || cp === 0x2029) for (let k = 0; k < n; k++) out += octal(seq.charCodeAt(k));
    else out += ch;
    i += n;
  }
  return out;
}

/** Inverse of escapePath: escaped text back to raw bytes (a latin1 string). */
export function unescapePath(text: string): string {
  const bytes = Buffer.from(text, 'utf8').toString('latin1');
  const named: Record<string, number> = { a: 7, b: 8, t: 9, n: 10, v: 11, f: 12, r: 13, e: 27, '\\': 0x5c };
  return bytes.replace(/\\([0-7]{3}|[abtnvfre\\])/g, (_, e: string) =>
    String.fromCharCode(e.length === 3 ? parseInt(e, 8) & 0xff : named[e]!),
  );
}

/** The path as seen inside the container: mount point + rel, a directory ending in '/'. */
export function containerPath(mount: string, rel: string, dir: boolean): string {
  const m = mount.replace(/\/+$/, '');
  const p = rel === '' ? m : `${m}/${rel}`;
  return dir ? `${p}/` : p === '' ? '/' : p;
}

export interface ChangelogLine {
  action: Action;
  /** Raw bytes (latin1), with the mount point and the trailing '/' of directories. */
  path: string;
}

const ACTION_ORDER: Record<Action, number> = { deleted: 0, modified: 1, added: 2 };

/**
 * The documented order: by path, component by component, comparing bytes (so a directory
 * comes just before its contents); for one path, deleted before modified before added.
 */
export function compareLines(a: ChangelogLine, b: ChangelogLine): number {
  return compareKeyed(keyed(a), keyed(b));
}

interface Keyed {
  parts: string[];
  line: ChangelogLine;
}

const keyed = (line: ChangelogLine): Keyed => ({ parts: line.path.split('/').filter(Boolean), line });

function compareKeyed(a: Keyed, b: Keyed): number {
  const pa = a.parts;
  const pb = b.parts;
  // latin1 strings: comparing chars compares bytes.
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    if (pa[i] !== pb[i]) return pa[i]! < pb[i]! ? -1 : 1;
  }
  if (pa.length !== pb.length) return pa.length - pb.length;
  return ACTION_ORDER[a.line.action] - ACTION_ORDER[b.line.action];
}

/** Lines in the documented order (the split paths computed once, not per comparison). */
export function sortLines(lines: ChangelogLine[]): ChangelogLine[] {
  return lines
    .map(keyed)
    .sort(compareKeyed)
    .map((k) => k.line);
}

/** `mount` is an ordinary string (from the LXC config or --mount); paths are raw bytes. */
export function toLines(changes: Iterable<Change>, mount: string): ChangelogLine[] {
  const m = Buffer.from(mount, 'utf8').toString('latin1');
  return [...changes].map((c) => ({ action: c.action, path: containerPath(m, c.rel, c.dir) }));
}

/** Sorted, escaped, newline-terminated text of a changelog. */
export function formatChangelog(lines: ChangelogLine[]): string {
  return sortLines(lines)
    .map((l) => `${l.action} ${escapePath(l.path)}\n`)
    .join('');
}

/** Parses one changelog line (as formatChangelog writes it) back; undefined if malformed. */
export function parseChangelogLine(line: string): ChangelogLine | undefined {
  const m = /^(added|modified|deleted) (\/.*)$/.exec(line);
  return m ? { action: m[1] as Action, path: unescapePath(m[2]!) } : undefined;
}
