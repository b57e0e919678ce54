// The numbers of the BTRFS send-stream format, versions 1 to 3 (btrfs-progs
// Documentation/dev/dev-send-stream.rst; man/sbk.7, STREAMS): sizes, command and attribute
// types, the names `btrfs receive --dump` prints, what each version allows, and the error a
// faulty stream gets. Shared by the parser (reader.ts), the receive guard (guard.ts) and the
// send-size estimator of sbk-send.
import { SbkError, ExitCode } from '../../core/errors.js';

export const SEND_STREAM_MAGIC = 'btrfs-stream\0';
/** The magic and a le32 version. */
export const STREAM_HEADER_SIZE = 17;
/** le32 length of the attributes, le16 type, le32 crc32c. */
export const COMMAND_HEADER_SIZE = 10;
/** An attribute's le16 type and le16 length (v2's DATA has no length: it runs to the end). */
export const TLV_HEADER_SIZE = 4;
/** Newest stream version this parser reads (3 adds ENABLE_VERITY). */
export const MAX_SEND_VERSION = 3;

/** Command types. */
export const Cmd = {
  SUBVOL: 1,
  SNAPSHOT: 2,
  MKFILE: 3,
  MKDIR: 4,
  MKNOD: 5,
  MKFIFO: 6,
  MKSOCK: 7,
  SYMLINK: 8,
  RENAME: 9,
  LINK: 10,
  UNLINK: 11,
  RMDIR: 12,
  SET_XATTR: 13,
  REMOVE_XATTR: 14,
  WRITE: 15,
  CLONE: 16,
  TRUNCATE: 17,
  CHMOD: 18,
  CHOWN: 19,
  UTIMES: 20,
  END: 21,
  UPDATE_EXTENT: 22,
  FALLOCATE: 23,
  FILEATTR: 24,
  ENCODED_WRITE: 25,
  ENABLE_VERITY: 26,
} as const;

/** Names as `btrfs receive --dump` prints them, indexed by command type. */
export const CMD_NAMES: readonly string[] = [
  'unspec', 'subvol', 'snapshot', 'mkfile', 'mkdir', 'mknod', 'mkfifo', 'mksock', 'symlink',
  'rename', 'link', 'unlink', 'rmdir', 'set_xattr', 'remove_xattr', 'write', 'clone', 'truncate',
  'chmod', 'chown', 'utimes', 'end', 'update_extent', 'fallocate', 'fileattr', 'encoded_write',
  'enable_verity',
];

/** Highest command type of each stream version. */
export const MAX_CMD = [0, 22, 25, 26];

/** Attribute (TLV) types. */
export const Attr = {
  UUID: 1,
  CTRANSID: 2,
  INO: 3,
  SIZE: 4,
  MODE: 5,
  UID: 6,
  GID: 7,
  RDEV: 8,
  CTIME: 9,
  MTIME: 10,
  ATIME: 11,
  OTIME: 12,
  XATTR_NAME: 13,
  XATTR_DATA: 14,
  PATH: 15,
  PATH_TO: 16,
  PATH_LINK: 17,
  FILE_OFFSET: 18,
  DATA: 19,
  CLONE_UUID: 20,
  CLONE_CTRANSID: 21,
  CLONE_PATH: 22,
  CLONE_OFFSET: 23,
  CLONE_LEN: 24,
  FALLOCATE_MODE: 25,
  FILEATTR: 26,
  UNENCODED_FILE_LEN: 27,
  UNENCODED_LEN: 28,
  UNENCODED_OFFSET: 29,
  COMPRESSION: 30,
  ENCRYPTION: 31,
  VERITY_ALGORITHM: 32,
  VERITY_BLOCK_SIZE: 33,
  VERITY_SALT_DATA: 34,
  VERITY_SIG_DATA: 35,
} as const;

export const MAX_ATTR = [0, 24, 31, 35];

/** Longest command accepted: v1 commands fit the kernel's 64 KiB buffer; later versions carry
 *  compressed extents (at most ~144 KiB today). The bound turns a garbage length into a clear
 *  error instead of a wait for bytes that never come. */
export const MAX_LEN_V1 = 64 * 1024;
export const MAX_LEN_V2 = 16 * 1024 * 1024;

/** The error of a corrupt stream (exit code 4), naming the byte offset of the faulty command. */
export const corruptAt = (offset: number, msg: string) =>
  new SbkError(`corrupt send stream at byte offset ${offset}: ${msg}`, ExitCode.corrupt);

export const cmdName = (type: number) => CMD_NAMES[type] ?? `command type ${type}`;

/** Required attributes per command: what `btrfs receive` would refuse to run without. */
export const REQUIRED: Record<number, number[]> = {
  [Cmd.SUBVOL]: [Attr.PATH, Attr.UUID, Attr.CTRANSID],
  [Cmd.SNAPSHOT]: [Attr.PATH, Attr.UUID, Attr.CTRANSID, Attr.CLONE_UUID, Attr.CLONE_CTRANSID],
  [Cmd.MKFILE]: [Attr.PATH],
  [Cmd.MKDIR]: [Attr.PATH],
  [Cmd.MKNOD]: [Attr.PATH, Attr.MODE, Attr.RDEV],
  [Cmd.MKFIFO]: [Attr.PATH],
  [Cmd.MKSOCK]: [Attr.PATH],
  [Cmd.SYMLINK]: [Attr.PATH, Attr.PATH_LINK],
  [Cmd.RENAME]: [Attr.PATH, Attr.PATH_TO],
  [Cmd.LINK]: [Attr.PATH, Attr.PATH_LINK],
  [Cmd.UNLINK]: [Attr.PATH],
  [Cmd.RMDIR]: [Attr.PATH],
  [Cmd.SET_XATTR]: [Attr.PATH, Attr.XATTR_NAME, Attr.XATTR_DATA],
  [Cmd.REMOVE_XATTR]: [Attr.PATH, Attr.XATTR_NAME],
  [Cmd.WRITE]: [Attr.PATH, Attr.FILE_OFFSET, Attr.DATA],
  [Cmd.CLONE]: [Attr.PATH, Attr.FILE_OFFSET, Attr.CLONE_LEN, Attr.CLONE_UUID, Attr.CLONE_CTRANSID, Attr.CLONE_PATH, Attr.CLONE_OFFSET],
  [Cmd.TRUNCATE]: [Attr.PATH, Attr.SIZE],
  [Cmd.CHMOD]: [Attr.PATH, Attr.MODE],
  [Cmd.CHOWN]: [Attr.PATH, Attr.UID, Attr.GID],
  [Cmd.UTIMES]: [Attr.PATH, Attr.ATIME, Attr.MTIME, Attr.CTIME],
  [Cmd.UPDATE_EXTENT]: [Attr.PATH, Attr.FILE_OFFSET, Attr.SIZE],
  [Cmd.FALLOCATE]: [Attr.PATH, Attr.FALLOCATE_MODE, Attr.FILE_OFFSET, Attr.SIZE],
  [Cmd.FILEATTR]: [Attr.PATH, Attr.FILEATTR],
  [Cmd.ENCODED_WRITE]: [Attr.PATH, Attr.FILE_OFFSET, Attr.UNENCODED_FILE_LEN, Attr.UNENCODED_LEN, Attr.UNENCODED_OFFSET, Attr.DATA],
  [Cmd.ENABLE_VERITY]: [Attr.PATH],
};
