// Where a sparse file holds data, for the tar's GNU sparse members. Node has no SEEK_DATA/
// SEEK_HOLE (nor FIEMAP), so a file whose allocated blocks are fewer than its length is read once
// and every all-zero aligned block counts as a hole: holes stay holes, and an allocated block of
// zeros in such a file becomes one too (the content is the same; it takes less space).
import type { FileHandle } from 'node:fs/promises';
import type { DataRegion } from '../../formats/pax.js';

/** The unit of holes: the page and block size of every Linux filesystem sbk meets. */
export const HOLE_BLOCK = 4096;
const CHUNK = 1024 * 1024;
const ZEROS = Buffer.alloc(CHUNK);

/** Whether a file may have holes: fewer bytes allocated than its length. */
export function mayBeSparse(size: bigint, blocks: bigint): boolean {
  return size > 0n && blocks * 512n < size;
}

/** The regions of `fd` (of `size` bytes) that are not all zeros, in aligned blocks, merged. */
export async function dataRegions(fd: FileHandle, size: bigint, signal?: AbortSignal): Promise<DataRegion[]> {
  const regions: DataRegion[] = [];
  const buf = Buffer.allocUnsafe(CHUNK);
  let start = -1n; // the open region's start, or -1
  let pos = 0n;
  const close = (end: bigint) => {
    if (start >= 0n) regions.push([start, end - start]);
    start = -1n;
  };
  while (pos < size) {
    signal?.throwIfAborted();
    const want = Number(size - pos < BigInt(CHUNK) ? size - pos : BigInt(CHUNK));
    const { bytesRead } = await fd.read(buf, 0, want, Number(pos));
    if (bytesRead === 0) break; // shorter than said: the writer finds out
    if (ZEROS.compare(buf, 0, bytesRead, 0, bytesRead) === 0) close(pos);
    else {
      for (let off = 0; off < bytesRead; off += HOLE_BLOCK) {
        const n = Math.min(HOLE_BLOCK, bytesRead - off);
        const zero = ZEROS.compare(buf, off, off + n, 0, n) === 0;
        if (zero) close(pos + BigInt(off));
        else if (start < 0n) start = pos + BigInt(off);
      }
    }
    pos += BigInt(bytesRead);
  }
  close(pos);
  return regions;
}
