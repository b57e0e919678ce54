// CRC-32 (the gzip one, IEEE 802.3), for the gzip framing sbk writes and checks.
// zlib.crc32 (Node >= 20.15) is native and fast; the table version only covers older Nodes.
import zlib from 'node:zlib';

type Crc32 = (data: Uint8Array, prev: number) => number;
const nativeCrc32 = (zlib as { crc32?: Crc32 }).crc32;

let table: Int32Array | undefined;
/** Exported for tests only. */
export function jsCrc32(data: Uint8Array, prev: number): number {
  if (!table) {
    table = new Int32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      table[n] = c;
    }
  }
  let c = ~prev;
  for (let i = 0; i < data.length; i++) c = table[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

export const crc32: Crc32 = nativeCrc32 ? (d, p) => nativeCrc32(d, p) : jsCrc32;

