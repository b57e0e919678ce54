// POSIX pax tar headers, byte for byte (what `sbk-unpack --tar` writes; man/sbk.7, TAR OUTPUT):
// the ustar header block, pax extended-header records (binary values: xattrs, non-UTF-8 names
// under `hdrcharset=BINARY`), and the GNU sparse format 1.0 (its map, its pax records).
// tar-stream's pack cannot carry these (its pax values are JS strings, written as UTF-8), so the
// blocks are made here; the bodies are the caller's.

export const BLOCK = 512;

/** ustar type flags. */
export const TarType = {
  file: '0',
  hardlink: '1',
  symlink: '2',
  chr: '3',
  blk: '4',
  dir: '5',
  fifo: '6',
  paxHeader: 'x',
} as const;
export type TarTypeFlag = (typeof TarType)[keyof typeof TarType];

/** One pax record's key and value (bytes: xattr values and raw names are not text). */
export type PaxRecord = [key: string, value: Buffer | string];

/** `"<len> <key>=<value>\n"`, where len counts the whole record, its own digits included. */
export function encodePaxRecord(key: string, value: Buffer | string): Buffer {
  if (key === '' || /[=\n]/.test(key) || key.includes('\0')) throw new Error(`pax record key ${JSON.stringify(key)} is not encodable`);
  const v = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  const rest = Buffer.byteLength(key, 'utf8') + v.length + 3; // ' ', '=', '\n'
  let digits = String(rest).length;
  while (String(rest + digits).length !== digits) digits++; // the length counts its own digits
  const len = rest + digits;
  return Buffer.concat([Buffer.from(`${len} ${key}=`, 'utf8'), v, Buffer.from('\n')]);
}

/** Parses pax records (for tests and checks); throws on a malformed one. */
export function decodePaxRecords(buf: Buffer): PaxRecord[] {
  const out: PaxRecord[] = [];
  let i = 0;
  while (i < buf.length) {
    const sp = buf.indexOf(0x20, i);
    if (sp < 0) throw new Error('pax record without length');
    const len = Number(buf.subarray(i, sp).toString('latin1'));
    if (!Number.isInteger(len) || len <= sp - i + 1 || i + len > buf.length || buf[i + len - 1] !== 0x0a) throw new Error('bad pax record length');
    const eq = buf.indexOf(0x3d, sp + 1);
    if (eq < 0 || eq >= i + len) throw new Error('pax record without =');
    out.push([buf.subarray(sp + 1, eq).toString('utf8'), Buffer.from(buf.subarray(eq + 1, i + len - 1))]);
    i += len;
  }
  return out;
}

/** True when the bytes are valid UTF-8 (pax text values must be, unless hdrcharset=BINARY). */
export function isUtf8(b: Buffer): boolean {
  return Buffer.from(b.toString('utf8'), 'utf8').equals(b);
}

const isPortable = (b: Buffer) => b.every((c) => c >= 0x20 && c < 0x7f);

export interface UstarFields {
  /** The member name (bytes; what does not fit goes in a pax `path` record). */
  name: Buffer;
  type: TarTypeFlag;
  mode: number;
  uid: number;
  gid: number;
  size: bigint;
  /** Seconds (the ns go in a pax record). */
  mtime: bigint;
  linkname?: Buffer;
  devmajor?: number;
  devminor?: number;
}

/** Writes `n` as a NUL-terminated octal field of `width` bytes; false when it does not fit. */
function octalField(h: Buffer, off: number, width: number, n: bigint | number): boolean {
  const s = BigInt(n).toString(8);
  if (BigInt(n) < 0n || s.length > width - 1) {
    h.write('0'.repeat(width - 1), off, 'latin1');
    return false;
  }
  h.write(s.padStart(width - 1, '0'), off, 'latin1');
  return true;
}

/**
 * The ustar block of an entry, and the pax records it needs for what ustar cannot hold: a long or
 * non-portable name or link target, ids or sizes too large for their octal fields.
 */
export function ustarHeader(f: UstarFields): { block: Buffer; records: PaxRecord[] } {
  const h = Buffer.alloc(BLOCK);
  const records: PaxRecord[] = [];
  const name = f.name;
  if (name.length <= 100 && isPortable(name)) name.copy(h, 0);
  else {
    records.push(['path', name]);
    portableTruncated(name, 100).copy(h, 0);
  }
  octalField(h, 100, 8, f.mode & 0o7777);
  if (!octalField(h, 108, 8, f.uid)) records.push(['uid', String(f.uid)]);
  if (!octalField(h, 116, 8, f.gid)) records.push(['gid', String(f.gid)]);
  if (!octalField(h, 124, 12, f.size)) records.push(['size', String(f.size)]);
  octalField(h, 136, 12, f.mtime < 0n ? 0n : f.mtime);
  h.write(f.type, 156, 'latin1');
  if (f.linkname) {
    if (f.linkname.length <= 100 && isPortable(f.linkname)) f.linkname.copy(h, 157);
    else {
      records.push(['linkpath', f.linkname]);
      portableTruncated(f.linkname, 100).copy(h, 157);
    }
  }
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  if (f.devmajor !== undefined) octalField(h, 329, 8, f.devmajor);
  if (f.devminor !== undefined) octalField(h, 337, 8, f.devminor);
  setChecksum(h);
  return { block: h, records };
}

function setChecksum(h: Buffer): void {
  h.fill(0x20, 148, 156);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
}

/** A stand-in name for the ustar field when the real one is in a pax record (readers ignore it). */
function portableTruncated(b: Buffer, max: number): Buffer {
  const out = Buffer.from(b.subarray(0, max));
  for (let i = 0; i < out.length; i++) if (out[i]! < 0x20 || out[i]! >= 0x7f) out[i] = 0x5f; // '_'
  return out;
}

/**
 * The pax extended header (its ustar block, its records, padding) for `records`, or nothing when
 * there are none. A value that is not UTF-8 (a raw name) needs `hdrcharset=BINARY`, which GNU tar
 * and libarchive honour, first.
 */
export function paxHeaderBlocks(forName: Buffer, records: PaxRecord[]): Buffer[] {
  if (records.length === 0) return [];
  const binary = records.some(([k, v]) => !k.startsWith('SCHILY.xattr.') && typeof v !== 'string' && !isUtf8(v));
  const body = Buffer.concat([...(binary ? [encodePaxRecord('hdrcharset', 'BINARY')] : []), ...records.map(([k, v]) => encodePaxRecord(k, v))]);
  const base = forName.subarray(forName.lastIndexOf(0x2f, forName.length - 2) + 1);
  const name = Buffer.concat([Buffer.from('./PaxHeaders/'), portableTruncated(base, 80)]);
  const { block } = ustarHeader({ name, type: TarType.paxHeader, mode: 0o644, uid: 0, gid: 0, size: BigInt(body.length), mtime: 0n });
  return [block, body, padding(body.length)];
}

/** Zero bytes that fill `n` bytes up to a whole block. */
export function padding(n: number | bigint): Buffer {
  const r = Number(BigInt(n) % BigInt(BLOCK));
  return Buffer.alloc(r === 0 ? 0 : BLOCK - r);
}

/** The end of an archive: two zero blocks. */
export const END_OF_ARCHIVE = Buffer.alloc(2 * BLOCK);

/** A region of a sparse file that holds data: [offset, length]. */
export type DataRegion = [offset: bigint, length: bigint];

/**
 * GNU sparse format 1.0: the map that starts the member's body (decimal lines: the number of
 * regions, then offset and length of each, padded to a block). A file ending in a hole ends with
 * an empty region at its size, as GNU tar writes it, so that extraction gives it its length.
 */
export function sparseMap(regions: DataRegion[], realSize: bigint): Buffer {
  const all = [...regions];
  const last = all[all.length - 1];
  if (!last || last[0] + last[1] < realSize) all.push([realSize, 0n]);
  const text = [String(all.length), ...all.flatMap(([o, l]) => [String(o), String(l)])].join('\n') + '\n';
  const b = Buffer.from(text, 'latin1');
  return Buffer.concat([b, padding(b.length)]);
}

/** The pax records of a GNU 1.0 sparse member; its ustar name is `<dir>/GNUSparseFile.0/<base>`. */
export function sparseRecords(name: Buffer, realSize: bigint): { records: PaxRecord[]; ustarName: Buffer } {
  const slash = name.lastIndexOf(0x2f, name.length - 1);
  const dir = slash < 0 ? Buffer.alloc(0) : name.subarray(0, slash + 1);
  const base = name.subarray(slash + 1);
  return {
    records: [
      ['GNU.sparse.major', '1'],
      ['GNU.sparse.minor', '0'],
      ['GNU.sparse.name', name],
      ['GNU.sparse.realsize', String(realSize)],
    ],
    ustarName: Buffer.concat([dir, Buffer.from('GNUSparseFile.0/'), base]),
  };
}

const ACL_TAGS: Record<number, string> = { 0x01: 'user', 0x02: 'user', 0x04: 'group', 0x08: 'group', 0x10: 'mask', 0x20: 'other' };
const ACL_QUALIFIED = new Set([0x02, 0x08]);

/**
 * The text form (`user::rw-,user:1234:r--,…`, numeric ids) of a POSIX ACL as the kernel keeps it
 * in `system.posix_acl_access`/`_default` (version 2: per entry le16 tag, le16 perm, le32 id),
 * for the SCHILY.acl.access/default records that bsdtar and `tar --acls` read. Undefined when the
 * bytes are not such an ACL.
 */
export function aclText(b: Buffer): string | undefined {
  if (b.length < 4 || (b.length - 4) % 8 !== 0 || b.readUInt32LE(0) !== 2) return undefined;
  const out: string[] = [];
  for (let i = 4; i < b.length; i += 8) {
    const tag = b.readUInt16LE(i);
    const perm = b.readUInt16LE(i + 2);
    const name = ACL_TAGS[tag];
    if (!name || perm > 7) return undefined;
    const id = ACL_QUALIFIED.has(tag) ? String(b.readUInt32LE(i + 4)) : '';
    out.push(`${name}:${id}:${perm & 4 ? 'r' : '-'}${perm & 2 ? 'w' : '-'}${perm & 1 ? 'x' : '-'}`);
  }
  return out.join(',');
}
