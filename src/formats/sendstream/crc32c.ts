// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), slicing-by-16 in plain TypeScript.
// BTRFS send streams checksum every command with it, sbk-unpack runs it over every byte it
// restores and `--verify` over whole multi-GB deltas, so speed matters: 16 table look-ups per
// 16 bytes, read as four 32-bit words (twice the speed of byte loads), no allocation but a view.
// Node has no built-in CRC32C (zlib.crc32 is the IEEE polynomial).

const POLY = 0x82f63b78;

/** 16 tables of 256 entries: T[k][b] is the CRC of byte b followed by k zero bytes. */
const T = new Int32Array(16 * 256);
for (let b = 0; b < 256; b++) {
  let c = b;
  for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
  T[b] = c;
}
for (let b = 0; b < 256; b++) {
  let c = T[b]!;
  for (let k = 1; k < 16; k++) {
    c = T[c & 0xff]! ^ (c >>> 8);
    T[k * 256 + b] = c;
  }
}

/** Word loads give the bytes in stream order only on a little-endian machine (x86, ARM). */
const LITTLE_ENDIAN = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
/** Below this many bytes a word view costs more than it saves. */
const WORDS_FROM = 64;

/**
 * Raw CRC32C update: no initial or final inversion. This is what BTRFS calls crc32c(seed, …)
 * and what a send stream stores (seed 0). Chainable: update(update(c, a), b) = update(c, a+b).
 */
export function crc32cUpdate(crc: number, buf: Uint8Array, start = 0, end = buf.length): number {
  let c = crc | 0;
  let i = start;
  const t = T;
  if (LITTLE_ENDIAN && end - i >= WORDS_FROM) {
    // Byte by byte up to a 4-byte boundary of the underlying memory, then 16 bytes per round.
    for (; (buf.byteOffset + i) & 3; i++) c = t[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
    const rounds = (end - i) >>> 4;
    const w = new Int32Array(buf.buffer, buf.byteOffset + i, rounds * 4);
    for (let j = 0; j < w.length; j += 4) {
      const a = c ^ w[j]!;
      const b = w[j + 1]!;
      const d = w[j + 2]!;
      const e = w[j + 3]!;
      c =
        t[3840 + (a & 0xff)]! ^
        t[3584 + ((a >>> 8) & 0xff)]! ^
        t[3328 + ((a >>> 16) & 0xff)]! ^
        t[3072 + (a >>> 24)]! ^
        t[2816 + (b & 0xff)]! ^
        t[2560 + ((b >>> 8) & 0xff)]! ^
        t[2304 + ((b >>> 16) & 0xff)]! ^
        t[2048 + (b >>> 24)]! ^
        t[1792 + (d & 0xff)]! ^
        t[1536 + ((d >>> 8) & 0xff)]! ^
        t[1280 + ((d >>> 16) & 0xff)]! ^
        t[1024 + (d >>> 24)]! ^
        t[768 + (e & 0xff)]! ^
        t[512 + ((e >>> 8) & 0xff)]! ^
        t[256 + ((e >>> 16) & 0xff)]! ^
        t[e >>> 24]!;
    }
    i += rounds * 16;
  }
  for (; i < end; i++) c = t[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return c >>> 0;
}

/** The standard CRC-32C (iSCSI, ext4): initial and final inversion. crc32c("123456789") = 0xE3069283. */
export function crc32c(buf: Uint8Array, prev = 0): number {
  return ~crc32cUpdate(~prev, buf) >>> 0;
}
