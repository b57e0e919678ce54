// What sbk-pack's options and the input sniffing (formats/input.ts) say of each compression
// format, without loading a codec: its name, its archives' file suffix, its levels, its magic
// bytes, how input of it is described and which errors say a stream of it is corrupt. The codecs
// (codec.ts's registry) take theirs from here, so the two never differ, `sbk-pack --help` loads no
// zlib and no child processes, and stages that only sniff their input or write no archive
// (sbk-changelog, sbk-send) load no codec.

/** The error code zstd.ts gives the errors of a corrupt or cut zstd stream (zstd -d failed). */
export const ZSTD_DATA_ERROR = 'ZSTD_DATA';

export const CODEC_INFO = {
  gzip: {
    name: 'gzip',
    suffix: '.tar.gz',
    levels: { min: 1, max: 9, default: 6 },
    magic: Buffer.from([0x1f, 0x8b]),
    description: 'gzip-compressed data (an sbk archive? sbk-pack output?)',
    /** True for the errors of a corrupt or cut compressed stream (as opposed to I/O errors). */
    isDataError: (err: Error) =>
      ((err as NodeJS.ErrnoException).code ?? '').startsWith('Z_') ||
      /incorrect header check|invalid (block|stored|distance|code)|unexpected end of file/i.test(err.message),
  },
  zstd: {
    name: 'zstd',
    suffix: '.tar.zst',
    levels: { min: 1, max: 19, default: 3 },
    magic: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]),
    description: 'zstd-compressed data (an sbk archive? sbk-pack output?)',
    isDataError: (err: Error) => (err as NodeJS.ErrnoException).code === ZSTD_DATA_ERROR,
  },
} as const;

export type CodecInfoName = keyof typeof CODEC_INFO;

/** The name of the format whose magic bytes `head` starts with, if any. */
export function codecNameForMagic(head: Buffer): CodecInfoName | undefined {
  return (Object.keys(CODEC_INFO) as CodecInfoName[]).find((n) => {
    const { magic } = CODEC_INFO[n];
    return head.length >= magic.length && head.subarray(0, magic.length).equals(magic);
  });
}

/** What sbk-pack writes unless told otherwise. */
export const DEFAULT_CODEC_NAME = 'gzip';

/** The format a read error belongs to, when it is one of a corrupt or cut compressed stream. */
export function codecNameOfDataError(err: Error): CodecInfoName | undefined {
  return (Object.keys(CODEC_INFO) as CodecInfoName[]).find((n) => CODEC_INFO[n].isDataError(err));
}
