// Builds BTRFS send streams byte by byte (with correct CRC32C), for tests that need streams
// `btrfs send` would never make: fuzzing, and hostile commands that must be refused.
import { crc32cUpdate } from '../../src/formats/sendstream/crc32c.js';
import { Attr, Cmd, SEND_STREAM_MAGIC } from '../../src/formats/sendstream/constants.js';

export function streamHeader(version: number): Buffer {
  const h = Buffer.alloc(17);
  Buffer.from(SEND_STREAM_MAGIC, 'latin1').copy(h);
  h.writeUInt32LE(version >>> 0, 13);
  return h;
}

/** A command with a correct CRC32C (computed with the crc field zeroed). */
export function command(type: number, body: Buffer): Buffer {
  const b = Buffer.alloc(10 + body.length);
  b.writeUInt32LE(body.length, 0);
  b.writeUInt16LE(type & 0xffff, 4);
  body.copy(b, 10);
  b.writeUInt32LE(crc32cUpdate(0, b), 6);
  return b;
}

export function tlv(type: number, value: Buffer, noLength = false): Buffer {
  const h = Buffer.alloc(noLength ? 2 : 4);
  h.writeUInt16LE(type, 0);
  if (!noLength) h.writeUInt16LE(value.length, 2);
  return Buffer.concat([h, value]);
}

const u64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};
const str = (s: string) => Buffer.from(s, 'latin1');

/** The commands of a small version 1 stream, by name: enough to write hostile ones. */
export const cmd = {
  subvol: (name: string, uuid = Buffer.alloc(16, 1)) =>
    command(Cmd.SUBVOL, Buffer.concat([tlv(Attr.PATH, str(name)), tlv(Attr.UUID, uuid), tlv(Attr.CTRANSID, u64(7))])),
  snapshot: (name: string, uuid: Buffer, parentUuid: Buffer) =>
    command(
      Cmd.SNAPSHOT,
      Buffer.concat([
        tlv(Attr.PATH, str(name)),
        tlv(Attr.UUID, uuid),
        tlv(Attr.CTRANSID, u64(8)),
        tlv(Attr.CLONE_UUID, parentUuid),
        tlv(Attr.CLONE_CTRANSID, u64(7)),
      ]),
    ),
  mkdir: (p: string) => command(Cmd.MKDIR, Buffer.concat([tlv(Attr.PATH, str(p)), tlv(Attr.INO, u64(300))])),
  mkfile: (p: string) => command(Cmd.MKFILE, Buffer.concat([tlv(Attr.PATH, str(p)), tlv(Attr.INO, u64(301))])),
  symlink: (p: string, target: string) =>
    command(Cmd.SYMLINK, Buffer.concat([tlv(Attr.PATH, str(p)), tlv(Attr.INO, u64(302)), tlv(Attr.PATH_LINK, str(target))])),
  link: (p: string, existing: string) => command(Cmd.LINK, Buffer.concat([tlv(Attr.PATH, str(p)), tlv(Attr.PATH_LINK, str(existing))])),
  rename: (from: string, to: string) => command(Cmd.RENAME, Buffer.concat([tlv(Attr.PATH, str(from)), tlv(Attr.PATH_TO, str(to))])),
  unlink: (p: string) => command(Cmd.UNLINK, tlv(Attr.PATH, str(p))),
  write: (p: string, data: Buffer) =>
    command(Cmd.WRITE, Buffer.concat([tlv(Attr.PATH, str(p)), tlv(Attr.FILE_OFFSET, u64(0)), tlv(Attr.DATA, data)])),
  writeAt: (p: string, offset: number, data: Buffer) =>
    command(Cmd.WRITE, Buffer.concat([tlv(Attr.PATH, str(p)), tlv(Attr.FILE_OFFSET, u64(offset)), tlv(Attr.DATA, data)])),
  truncate: (p: string, size: number) => command(Cmd.TRUNCATE, Buffer.concat([tlv(Attr.PATH, str(p)), tlv(Attr.SIZE, u64(size))])),
  rmdir: (p: string) => command(Cmd.RMDIR, tlv(Attr.PATH, str(p))),
  /** CLONE of `len` bytes at `cloneOffset` of `clonePath` in subvolume `cloneUuid` to `offset` of `p`. */
  clone: (p: string, offset: number, len: number, cloneUuid: Buffer, clonePath: string, cloneOffset: number) =>
    command(
      Cmd.CLONE,
      Buffer.concat([
        tlv(Attr.PATH, str(p)),
        tlv(Attr.FILE_OFFSET, u64(offset)),
        tlv(Attr.CLONE_LEN, u64(len)),
        tlv(Attr.CLONE_UUID, cloneUuid),
        tlv(Attr.CLONE_CTRANSID, u64(7)),
        tlv(Attr.CLONE_PATH, str(clonePath)),
        tlv(Attr.CLONE_OFFSET, u64(cloneOffset)),
      ]),
    ),
  chmod: (p: string, mode: number) => command(Cmd.CHMOD, Buffer.concat([tlv(Attr.PATH, str(p)), tlv(Attr.MODE, u64(mode))])),
  chown: (p: string) => command(Cmd.CHOWN, Buffer.concat([tlv(Attr.PATH, str(p)), tlv(Attr.UID, u64(0)), tlv(Attr.GID, u64(0))])),
  end: () => command(Cmd.END, Buffer.alloc(0)),
};

/** A version 1 stream of these commands (END added). */
export function stream(...commands: Buffer[]): Buffer {
  return Buffer.concat([streamHeader(1), ...commands, cmd.end()]);
}
