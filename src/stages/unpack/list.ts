// sbk-unpack --list: the files of a container's tree, one a line, as `tar tv` shows them (type and
// mode, owner, size, mtime, path), or NDJSON with --json (man/sbk.7, FILE LIST).
import type { Writable } from 'node:stream';
import { writeChunk } from '../../core/streams.js';
import { escapePath } from '../../formats/changelog-lines.js';
import { formatRootTime } from '../../formats/archive/manifest.js';
import { isUtf8 } from '../../formats/pax.js';
import { HardLinks, deviceNumbers, type FileKind, type TreeEntry } from './tree.js';

const TYPE_CHAR: Record<FileKind, string> = { file: '-', dir: 'd', symlink: 'l', chr: 'c', blk: 'b', fifo: 'p', sock: 's' };

/** `drwxr-xr-x`, with s/S and t/T as ls writes them. */
export function modeString(kind: FileKind, mode: number): string {
  const rwx = (bits: number, special: boolean, ch: string) =>
    (bits & 4 ? 'r' : '-') + (bits & 2 ? 'w' : '-') + (special ? (bits & 1 ? ch : ch.toUpperCase()) : bits & 1 ? 'x' : '-');
  return (
    TYPE_CHAR[kind] +
    rwx((mode >> 6) & 7, (mode & 0o4000) !== 0, 's') +
    rwx((mode >> 3) & 7, (mode & 0o2000) !== 0, 's') +
    rwx(mode & 7, (mode & 0o1000) !== 0, 't')
  );
}

/** One NDJSON object of --list --json. */
export interface ListedFile {
  path: string;
  /** The path's bytes in base64, when they are not UTF-8 (`path` then has U+FFFD in their place). */
  pathBase64?: string;
  type: FileKind;
  mode: string;
  uid: number;
  gid: number;
  size: number;
  /** `<seconds>.<9 digits>` */
  mtime: string;
  /** A symlink's target. */
  target?: string;
  /** A second name of a file: the path it was first listed at. */
  linkTo?: string;
  major?: number;
  minor?: number;
}

export function listedFile(e: TreeEntry, earlier: Buffer | undefined): ListedFile {
  const f: ListedFile = {
    path: e.path.toString('utf8'),
    type: e.kind,
    mode: e.mode.toString(8).padStart(4, '0'),
    uid: e.uid,
    gid: e.gid,
    size: Number(e.size),
    mtime: formatRootTime(e.mtimeNs),
  };
  if (!isUtf8(e.path)) f.pathBase64 = e.path.toString('base64');
  if (e.symlinkTarget) f.target = e.symlinkTarget.toString('utf8');
  if (earlier) f.linkTo = earlier.toString('utf8');
  if (e.kind === 'chr' || e.kind === 'blk') Object.assign(f, deviceNumbers(e.rdev));
  return f;
}

const escaped = (b: Buffer) => escapePath(b.toString('latin1'));

/** The `tar tv` line of an entry; times in UTC. */
export function listLine(e: TreeEntry, earlier: Buffer | undefined): string {
  const size = e.kind === 'chr' || e.kind === 'blk' ? `${deviceNumbers(e.rdev).major},${deviceNumbers(e.rdev).minor}` : String(e.size);
  const when = new Date(Number(e.mtimeNs / 1_000_000n)).toISOString().slice(0, 19).replace('T', ' ');
  let line = `${modeString(e.kind, e.mode)} ${e.uid}/${e.gid} ${size.padStart(9)} ${when} ${escaped(e.path)}`;
  if (earlier) line += ` link to ${escaped(earlier)}`;
  else if (e.symlinkTarget) line += ` -> ${escaped(e.symlinkTarget)}`;
  return line;
}

/** Writes the listing of `entries` into `out`, with backpressure. Returns the number listed. */
export async function writeList(entries: AsyncIterable<TreeEntry>, out: Writable, json: boolean): Promise<number> {
  const links = new HardLinks();
  let n = 0;
  let batch: string[] = [];
  for await (const e of entries) {
    const earlier = links.earlier(e);
    batch.push(json ? JSON.stringify(listedFile(e, earlier)) : listLine(e, earlier));
    n++;
    if (batch.length >= 512) {
      await writeChunk(out, Buffer.from(batch.join('\n') + '\n'));
      batch = [];
    }
  }
  if (batch.length) await writeChunk(out, Buffer.from(batch.join('\n') + '\n'));
  return n;
}
