// The send-stream parser against real recorded streams (test/fixtures/sendstream, made by
// make-fixtures.sh there): every command must match what `btrfs receive --dump` printed for
// the same stream, and corruption or truncation must be reported with its byte offset.
import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import fc from 'fast-check';
import { readSendStream, SendStreamReader, type SendCommand, type Timespec } from '../../src/formats/sendstream/reader.js';
import { Cmd } from '../../src/formats/sendstream/constants.js';
import { crc32c, crc32cUpdate } from '../../src/formats/sendstream/crc32c.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';
import { chunked } from '../helpers/fuzz.js';

/** Verifies a whole stream without decoding it: the reader with decode 'first'. */
async function verifySendStream(parts: Buffer[]) {
  const r = new SendStreamReader(undefined, { decode: 'first' });
  for (const p of parts) r.write(p);
  return r.end();
}

/** The reader as a pipeline() sink: verifies what arrives, its summary once it ended. */
function verifierSink() {
  const sink = async (src: AsyncIterable<Buffer>) => {
    const r = new SendStreamReader(undefined, { decode: 'first' });
    for await (const c of src) r.write(c);
    sink.summary = r.end();
  };
  sink.summary = undefined as ReturnType<SendStreamReader['end']> | undefined;
  return sink;
}

/** The reader inside a pipeline(): passes each chunk on once the commands it completes are checked. */
function verifyingPassThrough() {
  const pass = async function* (src: AsyncIterable<Buffer>) {
    const r = new SendStreamReader(undefined, { decode: 'first' });
    for await (const c of src) {
      r.write(c);
      yield c;
    }
    pass.summary = r.end();
  };
  pass.summary = undefined as ReturnType<SendStreamReader['end']> | undefined;
  return pass;
}

const FIX = new URL('../fixtures/sendstream/', import.meta.url);
const fixture = (name: string) => readFileSync(new URL(name, FIX));
const STREAMS = [
  'v1-full',
  'v1-full-nodata',
  'v1-incr',
  'v1-incr-nodata',
  'v2-full',
  'v2-full-compressed',
  'v2-incr-nodata',
] as const;


async function parseAll(chunks: Iterable<Buffer> | Buffer, opts: { wantData?: boolean } = {}): Promise<SendCommand[]> {
  const src = Buffer.isBuffer(chunks) ? [chunks] : chunks;
  const out: SendCommand[] = [];
  for await (const c of readSendStream(Readable.from(src, { objectMode: true }), opts)) out.push(c);
  return out;
}

async function errorOf(p: Promise<unknown>): Promise<SbkError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(SbkError);
    return err as SbkError;
  }
  throw new Error('expected an error');
}

// --- a re-implementation of `btrfs receive --dump` output (btrfs-progs 6.2, TZ=UTC) ---

/** receive-dump's path escaping: C escapes, space as "\ ", other non-printables as octal. */
function dumpEscape(s: string): string {
  let out = '';
  for (const ch of s) {
    const b = ch.charCodeAt(0);
    const named: Record<number, string> = { 7: 'a', 8: 'b', 27: 'e', 12: 'f', 10: 'n', 13: 'r', 9: 't', 11: 'v', 32: ' ', 92: '\\' };
    if (named[b]) out += '\\' + named[b];
    else if (b < 0x20 || b >= 0x7f) out += '\\' + b.toString(8).padStart(3, '0');
    else out += ch;
  }
  return out;
}

const dumpTime = (t: Timespec) => new Date(t.sec * 1000).toISOString().replace(/\.\d+Z$/, '+0000');

function dumpLine(c: SendCommand, root: string): string {
  const full = (p: string) => (p === '' ? `${root}/` : `${root}/${p}`);
  const esc = (p: string) => dumpEscape(full(p));
  let path: string;
  let args: string | undefined;
  switch (c.type) {
    case Cmd.SUBVOL:
      path = dumpEscape(root);
      args = `uuid=${c.uuid} transid=${c.ctransid}`;
      break;
    case Cmd.SNAPSHOT:
      path = dumpEscape(root);
      args = `uuid=${c.uuid} transid=${c.ctransid} parent_uuid=${c.cloneUuid} parent_transid=${c.cloneCtransid}`;
      break;
    default:
      path = esc(c.path!);
  }
  switch (c.type) {
    case Cmd.MKNOD: args = `mode=${c.mode!.toString(8)} dev=0x${c.rdev!.toString(16)}`; break;
    case Cmd.SYMLINK: args = `dest=${dumpEscape(c.pathLink!)}`; break;
    case Cmd.RENAME: args = `dest=${esc(c.pathTo!)}`; break;
    case Cmd.LINK: args = `dest=${dumpEscape(c.pathLink!)}`; break;
    case Cmd.WRITE: args = `offset=${c.fileOffset} len=${c.dataLength}`; break;
    case Cmd.CLONE: args = `offset=${c.fileOffset} len=${c.cloneLen} from=${esc(c.clonePath!)} clone_offset=${c.cloneOffset}`; break;
    case Cmd.SET_XATTR: args = `name=${c.xattrName} data=${c.xattrData!.toString('latin1')} len=${c.xattrData!.length}`; break;
    case Cmd.REMOVE_XATTR: args = `name=${c.xattrName}`; break;
    case Cmd.TRUNCATE: args = `size=${c.size}`; break;
    case Cmd.CHMOD: args = `mode=${c.mode!.toString(8)}`; break;
    case Cmd.CHOWN: args = `gid=${c.gid} uid=${c.uid}`; break;
    case Cmd.UTIMES: args = `atime=${dumpTime(c.atime!)} mtime=${dumpTime(c.mtime!)} ctime=${dumpTime(c.ctime!)}`; break;
    case Cmd.UPDATE_EXTENT: args = `offset=${c.fileOffset} len=${c.size}`; break;
    case Cmd.ENCODED_WRITE:
      args =
        `offset=${c.fileOffset} len=${c.dataLength}, unencoded_file_len=${c.unencodedFileLen}, unencoded_len=${c.unencodedLen}, ` +
        `unencoded_offset=${c.unencodedOffset}, compression=${c.compression ?? 0}, encryption=${c.encryption ?? 0}`;
      break;
  }
  const head = c.name.padEnd(16) + path;
  return args === undefined ? head : head + ' '.repeat(Math.max(1, 32 - path.length)) + args;
}

function dumpOf(cmds: SendCommand[]): string {
  const first = cmds[0]!;
  const root = `./${first.path}`;
  return cmds
    .filter((c) => c.type !== Cmd.END)
    .map((c) => dumpLine(c, root) + '\n')
    .join('');
}

describe('CRC32C', () => {
  it('matches the standard check values', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(32))).toBe(0x8a9136aa);
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i)))).toBe(0x46dd794e);
  });

  it('is chainable over any split, and equal to a bitwise reference', () => {
    const ref = (b: Uint8Array) => {
      let c = 0;
      for (const x of b) {
        c ^= x;
        for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
      }
      return c >>> 0;
    };
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(300), (data, cut) => {
        const b = Buffer.from(data);
        const k = Math.min(cut, b.length);
        const whole = crc32cUpdate(0, b);
        expect(whole).toBe(ref(b));
        expect(crc32cUpdate(crc32cUpdate(0, b, 0, k), b, k)).toBe(whole);
      }),
    );
  });

  it('reads long ranges word by word at any alignment of the memory, with the same result as the reference', () => {
    const ref = (b: Uint8Array, c = 0) => {
      for (const x of b) {
        c ^= x;
        for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
      }
      return c >>> 0;
    };
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 1, maxLength: 3000 }), fc.nat(7), fc.nat(3000), fc.nat(3000), fc.integer(), (data, shift, a, z, seed) => {
        // The same bytes at another offset of another ArrayBuffer, cut at [start, end).
        const mem = new Uint8Array(data.length + shift);
        mem.set(data, shift);
        const view = Buffer.from(mem.buffer, shift, data.length);
        const start = Math.min(a, z, data.length);
        const end = Math.min(Math.max(a, z), data.length);
        expect(crc32cUpdate(seed, view, start, end)).toBe(ref(data.subarray(start, end), seed | 0));
      }),
      { numRuns: 300 },
    );
  });
});

describe('send-stream parser on recorded streams', () => {
  for (const name of STREAMS) {
    it(`${name}: every command matches btrfs receive --dump`, async () => {
      const cmds = await parseAll(fixture(`${name}.stream`));
      expect(cmds.at(-1)!.type).toBe(Cmd.END);
      expect(dumpOf(cmds)).toBe(fixture(`${name}.dump`).toString('latin1'));
    });
  }

  it('reads protocol versions 1 and 2', async () => {
    expect((await verifySendStream([fixture('v1-full.stream')])).version).toBe(1);
    expect((await verifySendStream([fixture('v2-full.stream')])).version).toBe(2);
  });

  it('gives the same commands whatever the chunking (1-byte chunks included)', async () => {
    const buf = fixture('v2-full-compressed.stream');
    const whole = await parseAll(buf, { wantData: true });
    await fc.assert(
      fc.asyncProperty(fc.array(fc.integer({ min: 1, max: 5000 }), { minLength: 1, maxLength: 8 }), async (sizes) => {
        expect(await parseAll(chunked(buf, sizes), { wantData: true })).toEqual(whole);
      }),
      { numRuns: 40 },
    );
    expect(await parseAll(chunked(buf, [1]), { wantData: true })).toEqual(whole);
  });

  it('skips file data unless asked, and returns it intact when asked', async () => {
    const buf = fixture('v1-full.stream');
    const lean = await parseAll(chunked(buf, [700, 3]));
    const writes = lean.filter((c) => c.type === Cmd.WRITE);
    expect(writes.length).toBeGreaterThan(0);
    for (const w of writes) {
      expect(w.data).toBeUndefined();
      expect(w.dataLength).toBeGreaterThan(0);
    }
    const full = await parseAll(chunked(buf, [700, 3]), { wantData: true });
    const hello = full.find((c) => c.type === Cmd.WRITE && c.path === 'a/f')!;
    expect(hello.data!.toString()).toBe('hello\n');
    // v2 compressed extents: data is the compressed bytes, unencoded lengths describe the file.
    const enc = (await parseAll(fixture('v2-full-compressed.stream'), { wantData: true })).find(
      (c) => c.type === Cmd.ENCODED_WRITE,
    )!;
    expect(enc.path).toBe('e/compressible');
    expect(enc.data!.length).toBe(enc.dataLength);
    expect(enc.unencodedFileLen).toBe(20000);
  });

  it('keeps non-UTF-8 names byte for byte', async () => {
    const cmds = await parseAll(fixture('v1-full.stream'));
    const names = cmds.filter((c) => c.type === Cmd.RENAME).map((c) => Buffer.from(c.pathTo!, 'latin1'));
    expect(names).toContainEqual(Buffer.from('bad\xffname', 'latin1'));
    expect(names).toContainEqual(Buffer.from('nl\nx'));
    expect(names).toContainEqual(Buffer.from('ünï cødé'));
  });

  it('names the incremental parent in the summary', async () => {
    const full = await verifySendStream([fixture('v1-full.stream')]);
    const incr = await verifySendStream([fixture('v1-incr-nodata.stream')]);
    expect(full.subvolume).toBe('s1');
    expect(full.parentUuid).toBeUndefined();
    expect(incr.subvolume).toBe('s2');
    expect(incr.parentUuid).toBe(full.uuid);
    expect(incr.bytes).toBe(fixture('v1-incr-nodata.stream').length);
  });
});

describe('send-stream errors', () => {
  // Offsets of each command in a fixture, from the parser itself.
  const offsets = async (buf: Buffer) => (await parseAll(buf)).map((c) => c.offset);

  it('a flipped byte: CRC32C mismatch naming the command offset (exit code 4)', async () => {
    for (const name of ['v1-incr-nodata', 'v2-full'] as const) {
      const good = fixture(`${name}.stream`);
      const offs = await offsets(good);
      const victim = offs[Math.floor(offs.length / 2)]!;
      const bad = Buffer.from(good);
      bad[victim + 12] ^= 0x20; // inside the command's TLVs
      const e = await errorOf(parseAll(chunked(bad, [999])));
      expect(e.exitCode).toBe(ExitCode.corrupt);
      expect(e.message).toMatch(new RegExp(`byte offset ${victim}\\b.*CRC32C mismatch`));
      const v = await errorOf(verifySendStream([bad]));
      expect(v.message).toBe(e.message);
    }
  });

  it('a damaged length: the offending command is named, not a hang', async () => {
    const good = fixture('v1-incr-nodata.stream');
    const offs = await offsets(good);
    const bad = Buffer.from(good);
    bad.writeUInt32LE(0x7fffffff, offs[3]!);
    const e = await errorOf(verifySendStream([bad]));
    expect(e.exitCode).toBe(ExitCode.corrupt);
    expect(e.message).toContain(`byte offset ${offs[3]}`);
  });

  it('truncation anywhere is an error naming the offset (exit code 4)', async () => {
    const good = fixture('v1-incr-nodata.stream');
    const offs = await offsets(good);
    // Cut inside a command body, inside a command header, and between commands (END missing).
    const mid = offs[5]! + 14;
    let e = await errorOf(verifySendStream([good.subarray(0, mid)]));
    expect(e.exitCode).toBe(ExitCode.corrupt);
    expect(e.message).toContain(`byte offset ${mid}`);
    expect(e.message).toContain(`command at byte offset ${offs[5]}`);
    e = await errorOf(parseAll(good.subarray(0, offs[5]! + 4)));
    expect(e.message).toContain(`header of the command at byte offset ${offs[5]}`);
    e = await errorOf(parseAll(good.subarray(0, offs.at(-1))));
    expect(e.message).toMatch(/ends without an END command/);
    // Every cut point fails, none hangs or passes.
    for (let cut = 1; cut < good.length; cut += 37) {
      await expect(verifySendStream([good.subarray(0, cut)])).rejects.toThrow(/byte offset|stream header/);
    }
  });

  it('data after END is refused (the stream must end there)', async () => {
    const good = fixture('v2-incr-nodata.stream');
    const e = await errorOf(verifySendStream([good, Buffer.from('x')]));
    expect(e.exitCode).toBe(ExitCode.corrupt);
    expect(e.message).toContain(`byte offset ${good.length}`);
  });

  it('other kinds of input are refused as bad input (exit code 3)', async () => {
    let e = await errorOf(verifySendStream([Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])]));
    expect(e.exitCode).toBe(ExitCode.badInput);
    expect(e.message).toMatch(/expected a btrfs send stream.*gzip/);
    e = await errorOf(verifySendStream([]));
    expect(e.exitCode).toBe(ExitCode.badInput);
    const v9 = Buffer.from(fixture('v1-full.stream'));
    v9.writeUInt32LE(9, 13);
    e = await errorOf(verifySendStream([v9]));
    expect(e.exitCode).toBe(ExitCode.badInput);
    expect(e.message).toMatch(/version 9/);
  });
});

describe('verifier streams', () => {
  it('the reader as a sink for pipeline()', async () => {
    const v = verifierSink();
    await pipeline(Readable.from(chunked(fixture('v2-full.stream'), [4096])), v);
    expect(v.summary).toMatchObject({ version: 2, subvolume: 's1' });
    const bad = Buffer.from(fixture('v2-full.stream'));
    bad[bad.length - 1] ^= 1;
    await expect(pipeline(Readable.from([bad]), verifierSink())).rejects.toThrow(/CRC32C mismatch/);
  });

  it('the reader in a pass-through: passes bytes on unchanged, fails on truncation', async () => {
    const good = fixture('v1-full.stream');
    const got: Buffer[] = [];
    const t = verifyingPassThrough();
    await pipeline(Readable.from(chunked(good, [1000])), t, async function* (src) {
      for await (const c of src) got.push(c as Buffer);
    });
    expect(Buffer.concat(got).equals(good)).toBe(true);
    expect(t.summary!.commands).toBeGreaterThan(10);
    await expect(
      pipeline(Readable.from([good.subarray(0, 5000)]), verifyingPassThrough(), async function* (src) {
        for await (const _ of src);
      }),
    ).rejects.toThrow(/truncated/);
  });

  it('the push reader can be driven directly', () => {
    const r = new SendStreamReader();
    for (const c of chunked(fixture('v1-incr.stream'), [10, 100])) r.write(c);
    expect(r.end().commands).toBeGreaterThan(5);
  });
});
