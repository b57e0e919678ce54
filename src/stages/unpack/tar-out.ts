// sbk-unpack --tar: a container's tree (tree.ts) as one POSIX pax tar on a stream, as the
// container sees it (`./etc/…`, the other volumes at their mount points): numeric owners, modes,
// times to the ns (mtime, atime), hard links as links, symlinks, fifos, devices, every xattr
// (ACLs and file capabilities too) as SCHILY.xattr records, sparse files in GNU sparse 1.0,
// names of any bytes (hdrcharset=BINARY). Sockets cannot be in a tar: left out, and said.
// Written with backpressure; memory: a 1 MiB read buffer, the hard links and the xattrs held.
import { open, type FileHandle } from 'node:fs/promises';
import { constants } from 'node:fs';
import type { Writable } from 'node:stream';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { Log } from '../../core/log.js';
import { writeChunk } from '../../core/streams.js';
import { formatRootTime as paxTime } from '../../formats/archive/manifest.js';
import { END_OF_ARCHIVE, TarType, aclText, padding, paxHeaderBlocks, sparseMap, sparseRecords, ustarHeader, type DataRegion, type PaxRecord, type TarTypeFlag } from '../../formats/pax.js';
import { readTreeXattrs, type Xattrs } from '../../system/xattrs.js';
import { HardLinks, deviceNumbers, type ContainerView, type TreeEntry } from './tree.js';
import { dataRegions, mayBeSparse } from './sparse.js';

const READ_CHUNK = 1024 * 1024;
/** Small entries are gathered up to this before a write, so a tree of tiny files is not a write per header. */
const GATHER = 256 * 1024;

const TYPE: Record<Exclude<TreeEntry['kind'], 'sock'>, TarTypeFlag> = {
  file: TarType.file,
  dir: TarType.dir,
  symlink: TarType.symlink,
  chr: TarType.chr,
  blk: TarType.blk,
  fifo: TarType.fifo,
};

const ACL_RECORDS: Record<string, string> = { 'system.posix_acl_access': 'SCHILY.acl.access', 'system.posix_acl_default': 'SCHILY.acl.default' };

/** The member name of a container path: `./etc/hostname`, `./` for the root, `./etc/` for a directory. */
export function memberName(p: Buffer, dir: boolean): Buffer {
  const rel = p.subarray(1);
  if (rel.length === 0) return Buffer.from('./');
  return Buffer.concat([Buffer.from('./'), rel, dir ? Buffer.from('/') : Buffer.alloc(0)]);
}

export interface TarOutOptions {
  log: Log;
  signal: AbortSignal;
}

/** Writes tree entries as tar members into `out`; `end()` writes the end of the archive. */
export class TarOut {
  private gathered: Buffer[] = [];
  private gatheredBytes = 0;
  private readonly links = new HardLinks();
  private readonly xattrs = new Map<string, Map<string, Xattrs>>();
  private sockets: string[] = [];
  members = 0;

  constructor(
    private readonly out: Writable,
    private readonly view: ContainerView,
    private readonly opts: TarOutOptions,
  ) {}

  /** Reads the xattrs of every volume (one getfattr each) before the first member. */
  async begin(): Promise<void> {
    for (const m of this.view.mounts) this.xattrs.set(m.volume, await readTreeXattrs(`${this.view.dir}/${m.volume}`, this.opts.signal));
  }

  async add(e: TreeEntry): Promise<void> {
    this.opts.signal.throwIfAborted();
    if (e.kind === 'sock') {
      this.sockets.push(e.path.toString('utf8'));
      return;
    }
    const earlier = this.links.earlier(e);
    const dir = e.kind === 'dir';
    let name = memberName(e.path, dir);
    const { major, minor } = deviceNumbers(e.rdev);
    const records: PaxRecord[] = [['mtime', paxTime(e.mtimeNs)], ['atime', paxTime(e.atimeNs)]];
    for (const [k, v] of this.xattrsOf(e)) {
      if (/[=\n]/.test(k)) {
        this.opts.log.warn(`${e.path.toString('utf8')}: xattr ${JSON.stringify(k)} cannot be named in a pax record: left out`);
        continue;
      }
      // ACLs also in the text form bsdtar (and tar --acls) restores them from, as GNU tar writes them.
      const acl = ACL_RECORDS[k] && aclText(v);
      if (acl) records.push([ACL_RECORDS[k]!, acl]);
      records.push([`SCHILY.xattr.${k}`, v]);
    }
    let type: TarTypeFlag = TYPE[e.kind];
    let size = 0n;
    let linkname: Buffer | undefined;
    let regions: DataRegion[] | undefined;
    let fd: FileHandle | undefined;
    if (earlier) {
      type = TarType.hardlink;
      linkname = memberName(earlier, false);
    } else if (e.kind === 'symlink') linkname = e.symlinkTarget;
    else if (e.kind === 'file' && e.size > 0n) {
      fd = await open(e.source, constants.O_RDONLY | constants.O_NOFOLLOW);
      size = e.size;
      if (mayBeSparse(e.size, e.blocks)) {
        const r = await dataRegions(fd, e.size, this.opts.signal);
        if (!(r.length === 1 && r[0]![0] === 0n && r[0]![1] === e.size)) regions = r;
      }
    }
    try {
      let sparsePrefix: Buffer | undefined;
      if (regions) {
        const s = sparseRecords(name, e.size);
        name = s.ustarName;
        sparsePrefix = sparseMap(regions, e.size);
        size = BigInt(sparsePrefix.length) + regions.reduce((n, [, l]) => n + l, 0n);
        records.push(...s.records);
      }
      const dev = e.kind === 'chr' || e.kind === 'blk';
      const h = ustarHeader({
        name,
        type,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size,
        mtime: e.mtimeNs / 1_000_000_000n,
        linkname,
        devmajor: dev ? major : undefined,
        devminor: dev ? minor : undefined,
      });
      // A sparse member's name is GNU.sparse.name: a `path` record would name the stand-in.
      const own = regions ? h.records.filter(([k]) => k !== 'path') : h.records;
      for (const b of paxHeaderBlocks(name, [...own, ...records])) await this.gather(b);
      await this.gather(h.block);
      if (fd) {
        if (sparsePrefix) await this.gather(sparsePrefix);
        await this.copy(fd, e, regions ?? [[0n, e.size]]);
        await this.gather(padding(size));
      }
      this.members++;
    } finally {
      await fd?.close();
    }
  }

  /** The file's xattrs as the tree holds them, with the overlay's on top. */
  private xattrsOf(e: TreeEntry): [string, Buffer][] {
    const own = this.xattrs.get(e.volume)?.get(e.source.toString('latin1'));
    if (!own && !e.overlayXattrs) return [];
    const all = new Map(own ?? []);
    for (const [k, v] of Object.entries(e.overlayXattrs ?? {})) all.set(k, v);
    return [...all].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  }

  /** The bytes of each region, exactly as long as the header said. */
  private async copy(fd: FileHandle, e: TreeEntry, regions: DataRegion[]): Promise<void> {
    for (const [offset, length] of regions) {
      let pos = offset;
      const end = offset + length;
      while (pos < end) {
        this.opts.signal.throwIfAborted();
        const want = end - pos < BigInt(READ_CHUNK) ? Number(end - pos) : READ_CHUNK;
        const buf = Buffer.allocUnsafe(want);
        const { bytesRead } = await fd.read(buf, 0, want, Number(pos));
        if (bytesRead === 0)
          throw new SbkError(`${e.source.toString('utf8')}: shorter than its size (${e.size} bytes) while being written to the tar`, ExitCode.failure);
        await this.gather(bytesRead === want ? buf : buf.subarray(0, bytesRead));
        pos += BigInt(bytesRead);
      }
    }
  }

  private async gather(b: Buffer): Promise<void> {
    if (b.length === 0) return;
    this.gathered.push(b);
    this.gatheredBytes += b.length;
    if (this.gatheredBytes >= GATHER) await this.flush();
  }

  private async flush(): Promise<void> {
    if (this.gatheredBytes === 0) return;
    const chunk = this.gathered.length === 1 ? this.gathered[0]! : Buffer.concat(this.gathered);
    this.gathered = [];
    this.gatheredBytes = 0;
    await writeChunk(this.out, chunk);
  }

  /** The end of the archive; says which sockets were left out. */
  async end(): Promise<void> {
    await this.gather(END_OF_ARCHIVE);
    await this.flush();
    if (this.sockets.length)
      this.opts.log.warn(
        `${this.sockets.length} socket${this.sockets.length === 1 ? '' : 's'} left out (a tar cannot hold one): ${this.sockets.slice(0, 5).join(', ')}${this.sockets.length > 5 ? ' …' : ''}`,
      );
  }
}
