// What sbk-pack's options say of each compression format, without loading a codec: its name, its
// archives' file suffix, its levels. The codecs (codec.ts's registry) take theirs from here, so the
// two never differ, and `sbk-pack --help` loads no zlib and no child processes.
export const CODEC_INFO = {
  gzip: { name: 'gzip', suffix: '.tar.gz', levels: { min: 1, max: 9, default: 6 } },
  zstd: { name: 'zstd', suffix: '.tar.zst', levels: { min: 1, max: 19, default: 3 } },
} as const;

/** What sbk-pack writes unless told otherwise. */
export const DEFAULT_CODEC_NAME = 'gzip';
