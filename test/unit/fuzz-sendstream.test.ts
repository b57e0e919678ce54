// Property-based fuzzing of the send-stream parser: random bytes, recorded
// streams damaged at the byte level, and streams damaged at the command level and re-checksummed
// (so that the damage gets past the CRC32C into the decoder). Whatever the input, every entry
// point (readSendStream, and SendStreamReader verifying alone, as a pipeline() sink and inside a
// pass-through) either accepts it or fails with an SbkError of exit code 3 (not a send stream) or
// 4 (corrupt); never another exception, never a hang, and all of them agree. Valid streams made
// from random commands decode back to exactly what was encoded, whatever the chunking.
// Fixed seeds: a failure reproduces from the seed and path fast-check prints.
import { readFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import fc from 'fast-check';
import { describe, it, expect } from 'vitest';
import { readSendStream, SendStreamReader, type SendCommand, type SendStreamSummary } from '../../src/formats/sendstream/reader.js';
import { Attr, Cmd, CMD_NAMES, REQUIRED, SEND_STREAM_MAGIC } from '../../src/formats/sendstream/constants.js';
import { streamHeader as header, command, tlv } from '../helpers/sendstream-builder.js';
import { changesFromModel } from '../../src/stages/changelog/changelog.js';
import { modelFromStream } from '../../src/stages/changelog/model.js';
import { formatChangelog, parseChangelogLine, toLines } from '../../src/formats/changelog-lines.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';
import { chunked, guarded, settler, type Outcome } from '../helpers/fuzz.js';

const FIX = new URL('../fixtures/sendstream/', import.meta.url);
const STREAMS = ['v1-full', 'v1-full-nodata', 'v1-incr', 'v1-incr-nodata', 'v2-full', 'v2-full-compressed', 'v2-incr-nodata'];
const FIXTURES = new Map(STREAMS.map((n) => [n, readFileSync(new URL(`${n}.stream`, FIX))]));
const MAGIC = Buffer.from(SEND_STREAM_MAGIC, 'latin1');

// ---------------------------------------------------------------------------------------------
// Running every entry point on one input

const settle = settler([ExitCode.badInput, ExitCode.corrupt]);

type SourceKind = 'array' | 'generator' | 'readable';
function source(parts: Buffer[], kind: SourceKind): Iterable<Buffer> | AsyncIterable<Buffer> {
  if (kind === 'array') return parts;
  if (kind === 'readable') return Readable.from(parts, { objectMode: true }) as AsyncIterable<Buffer>;
  return (async function* () {
    for (const p of parts) {
      await Promise.resolve();
      yield p;
    }
  })();
}

async function readWhole(parts: Buffer[], kind: SourceKind, wantData = false): Promise<{ cmds: SendCommand[]; summary: SendStreamSummary }> {
  const it = readSendStream(source(parts, kind), { wantData });
  const cmds: SendCommand[] = [];
  for (;;) {
    const r = await it.next();
    if (r.done) return { cmds, summary: r.value };
    cmds.push(r.value);
  }
}

/** Verifies a whole stream without decoding it: the reader with decode 'first'. */
async function verifySendStream(src: AsyncIterable<Buffer | Uint8Array> | Iterable<Buffer | Uint8Array>): Promise<SendStreamSummary> {
  const r = new SendStreamReader(undefined, { decode: 'first' });
  for await (const c of src) r.write(c);
  return r.end();
}

async function passThrough(parts: Buffer[]): Promise<{ summary: SendStreamSummary | undefined; out: Buffer }> {
  // The reader inside a pipeline(): a chunk goes on once the commands it completes are checked.
  const t = { summary: undefined as SendStreamSummary | undefined };
  const verifying = async function* (src: AsyncIterable<Buffer>) {
    const r = new SendStreamReader(undefined, { decode: 'first' });
    for await (const c of src) {
      r.write(c);
      yield c;
    }
    t.summary = r.end();
  };
  const out: Buffer[] = [];
  const done = pipeline(Readable.from(parts, { objectMode: true }), verifying, async (src: AsyncIterable<Buffer>) => {
    for await (const c of src) out.push(c);
  });
  try {
    await done;
  } catch (err) {
    // What went through before the error must be a prefix of the input: checked by the caller.
    (err as { passed?: Buffer }).passed = Buffer.concat(out);
    throw err;
  }
  return { summary: t.summary, out: Buffer.concat(out) };
}

interface AllOutcomes {
  read: Outcome<{ cmds: SendCommand[]; summary: SendStreamSummary }>;
  verify: Outcome<SendStreamSummary>;
}

/**
 * Feeds `buf` (cut into chunks of `sizes`) to every entry point and checks that they agree:
 * the verifiers (decode 'first') give the same verdict and message; the full decoder fails
 * whenever they fail, and when it succeeds they do too, with the same summary.
 */
async function runAll(buf: Buffer, sizes: number[], kind: SourceKind): Promise<AllOutcomes> {
  const parts = chunked(buf, sizes);
  const read = await settle('readSendStream', () => readWhole(parts, kind));
  const verify = await settle('verifySendStream', () => verifySendStream(source(parts, kind)));
  const reader = await settle('SendStreamReader', async () => {
    const r = new SendStreamReader(undefined, { decode: 'first' });
    for (const p of parts) r.write(p);
    return r.end();
  });
  const sink = await settle('SendStreamReader as a pipeline() sink', async () => {
    let summary: SendStreamSummary | undefined;
    await pipeline(Readable.from(parts, { objectMode: true }), async (src: AsyncIterable<Buffer>) => {
      const r = new SendStreamReader(undefined, { decode: 'first' });
      for await (const c of src) r.write(c);
      summary = r.end();
    });
    return summary!;
  });
  let passed: Buffer | undefined;
  const pass = await settle('SendStreamReader in a pass-through', () =>
    passThrough(parts).catch((err: unknown) => {
      passed = (err as { passed?: Buffer }).passed;
      throw err;
    }),
  );

  const msg = (o: Outcome<unknown>) => (o.ok ? 'ok' : o.err.message);
  expect(msg(reader)).toBe(msg(verify));
  expect(msg(sink)).toBe(msg(verify));
  expect(msg(pass)).toBe(msg(verify));
  if (verify.ok) {
    expect((reader as { value: SendStreamSummary }).value).toEqual(verify.value);
    expect((sink as { value: SendStreamSummary }).value).toEqual(verify.value);
    const p = (pass as { value: { summary: SendStreamSummary; out: Buffer } }).value;
    expect(p.summary).toEqual(verify.value);
    expect(p.out.equals(buf)).toBe(true);
  } else {
    // A failing pass-through has passed on a prefix of its input, never bytes of its own.
    const got = passed ?? Buffer.alloc(0);
    expect(got.equals(buf.subarray(0, got.length))).toBe(true);
  }
  if (read.ok) {
    expect(verify.ok).toBe(true);
    expect(read.value.summary).toEqual((verify as { value: SendStreamSummary }).value);
    checkDecoded(read.value.cmds, read.value.summary, buf.length);
  } else {
    if (!verify.ok) expect(read.err.exitCode === verify.err.exitCode || read.err.exitCode === ExitCode.corrupt).toBe(true);
  }
  // Input that does not start like a send stream is not a send stream (3), however short.
  const head = buf.subarray(0, Math.min(buf.length, MAGIC.length));
  if (buf.length === 0 || !head.equals(MAGIC.subarray(0, head.length))) {
    expect(verify.ok).toBe(false);
    expect((verify as { err: SbkError }).err.exitCode).toBe(ExitCode.badInput);
  }
  return { read, verify };
}

/** What an accepted stream must look like, whatever it was made from. */
function checkDecoded(cmds: SendCommand[], summary: SendStreamSummary, length: number) {
  expect(cmds.length).toBe(summary.commands);
  expect(summary.bytes).toBe(length);
  expect([Cmd.SUBVOL, Cmd.SNAPSHOT]).toContain(cmds[0]!.type);
  expect(cmds.at(-1)!.type).toBe(Cmd.END);
  expect(cmds.filter((c) => c.type === Cmd.END)).toHaveLength(1);
  let last = -1;
  for (const c of cmds) {
    expect(c.offset).toBeGreaterThan(last);
    last = c.offset;
    expect(c.name).toBe(CMD_NAMES[c.type]);
    for (const a of REQUIRED[c.type] ?? []) expect(c[KEY[a]!.key], `${c.name} lacks ${KEY[a]!.key}`).not.toBeUndefined();
  }
}

// ---------------------------------------------------------------------------------------------
// Encoding streams (the test's own writer, after btrfs-progs' send-stream.rst)


type Kind = 'u64' | 'u32' | 'uuid' | 'ts' | 'str' | 'bytes' | 'data' | 'ignored';
/** Attribute → the SendCommand field it fills and how its value is encoded. */
const KEY: Record<number, { key: keyof SendCommand; kind: Kind }> = {
  [Attr.UUID]: { key: 'uuid', kind: 'uuid' },
  [Attr.CTRANSID]: { key: 'ctransid', kind: 'u64' },
  [Attr.INO]: { key: 'ino', kind: 'u64' },
  [Attr.SIZE]: { key: 'size', kind: 'u64' },
  [Attr.MODE]: { key: 'mode', kind: 'u64' },
  [Attr.UID]: { key: 'uid', kind: 'u64' },
  [Attr.GID]: { key: 'gid', kind: 'u64' },
  [Attr.RDEV]: { key: 'rdev', kind: 'u64' },
  [Attr.CTIME]: { key: 'ctime', kind: 'ts' },
  [Attr.MTIME]: { key: 'mtime', kind: 'ts' },
  [Attr.ATIME]: { key: 'atime', kind: 'ts' },
  [Attr.OTIME]: { key: 'otime', kind: 'ts' },
  [Attr.XATTR_NAME]: { key: 'xattrName', kind: 'str' },
  [Attr.XATTR_DATA]: { key: 'xattrData', kind: 'bytes' },
  [Attr.PATH]: { key: 'path', kind: 'str' },
  [Attr.PATH_TO]: { key: 'pathTo', kind: 'str' },
  [Attr.PATH_LINK]: { key: 'pathLink', kind: 'str' },
  [Attr.FILE_OFFSET]: { key: 'fileOffset', kind: 'u64' },
  [Attr.DATA]: { key: 'dataLength', kind: 'data' },
  [Attr.CLONE_UUID]: { key: 'cloneUuid', kind: 'uuid' },
  [Attr.CLONE_CTRANSID]: { key: 'cloneCtransid', kind: 'u64' },
  [Attr.CLONE_PATH]: { key: 'clonePath', kind: 'str' },
  [Attr.CLONE_OFFSET]: { key: 'cloneOffset', kind: 'u64' },
  [Attr.CLONE_LEN]: { key: 'cloneLen', kind: 'u64' },
  [Attr.FALLOCATE_MODE]: { key: 'fallocateMode', kind: 'u32' },
  [Attr.FILEATTR]: { key: 'fileattr', kind: 'u64' },
  [Attr.UNENCODED_FILE_LEN]: { key: 'unencodedFileLen', kind: 'u64' },
  [Attr.UNENCODED_LEN]: { key: 'unencodedLen', kind: 'u64' },
  [Attr.UNENCODED_OFFSET]: { key: 'unencodedOffset', kind: 'u64' },
  [Attr.COMPRESSION]: { key: 'compression', kind: 'u32' },
  [Attr.ENCRYPTION]: { key: 'encryption', kind: 'u32' },
  [Attr.VERITY_ALGORITHM]: { key: 'offset', kind: 'ignored' },
  [Attr.VERITY_BLOCK_SIZE]: { key: 'offset', kind: 'ignored' },
  [Attr.VERITY_SALT_DATA]: { key: 'offset', kind: 'ignored' },
  [Attr.VERITY_SIG_DATA]: { key: 'offset', kind: 'ignored' },
};
const MAX_CMD = [0, 22, 25, 26];
const MAX_ATTR = [0, 24, 31, 35];

interface Val {
  bytes: Buffer;
  value: unknown;
}

const le64 = (v: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(v));
  return b;
};
const le32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
};
const uuidText = (b: Buffer) => {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
};

const VAL: Record<Kind, fc.Arbitrary<Val>> = {
  u64: fc.oneof(fc.nat(4096), fc.maxSafeNat()).map((v) => ({ bytes: le64(v), value: v })),
  u32: fc.nat({ max: 0xffffffff }).map((v) => ({ bytes: le32(v), value: v })),
  uuid: fc.uint8Array({ minLength: 16, maxLength: 16 }).map((a) => ({ bytes: Buffer.from(a), value: uuidText(Buffer.from(a)) })),
  ts: fc.tuple(fc.integer({ min: -(2 ** 40), max: 2 ** 40 }), fc.nat({ max: 0xffffffff })).map(([sec, nsec]) => {
    const b = Buffer.alloc(12);
    b.writeBigInt64LE(BigInt(sec));
    b.writeUInt32LE(nsec, 8);
    return { bytes: b, value: { sec, nsec } };
  }),
  // Names are any bytes (latin1, one char per byte), '/' and NUL included: the parser keeps them.
  str: fc.uint8Array({ maxLength: 40 }).map((a) => ({ bytes: Buffer.from(a), value: Buffer.from(a).toString('latin1') })),
  bytes: fc.uint8Array({ maxLength: 60 }).map((a) => ({ bytes: Buffer.from(a), value: Buffer.from(a) })),
  data: fc.uint8Array({ maxLength: 400 }).map((a) => ({ bytes: Buffer.from(a), value: Buffer.from(a) })),
  ignored: fc.uint8Array({ maxLength: 20 }).map((a) => ({ bytes: Buffer.from(a), value: undefined })),
};

interface GenCommand {
  type: number;
  attrs: { type: number; val: Val }[];
}

/** A command of `type` with its required attributes and some optional ones, in random order (DATA last). */
function commandArb(type: number, version: number, vals: Record<Kind, fc.Arbitrary<Val>> = VAL): fc.Arbitrary<GenCommand> {
  const required = REQUIRED[type] ?? [];
  const optional = Object.keys(KEY)
    .map(Number)
    .filter((a) => a <= MAX_ATTR[version]! && !required.includes(a) && a !== Attr.DATA);
  return fc
    .subarray(optional, { maxLength: 3 })
    .chain((opt) => fc.shuffledSubarray([...required, ...opt], { minLength: required.length + opt.length }))
    .chain((order0) => {
      // From version 2 DATA has no length: it must be the last attribute.
      const order = version >= 2 ? [...order0.filter((a) => a !== Attr.DATA), ...order0.filter((a) => a === Attr.DATA)] : order0;
      return fc.tuple(...order.map((a) => vals[KEY[a]!.kind])).map((vs) => ({
        type,
        attrs: order.map((a, i) => ({ type: a, val: vs[i]! })),
      }));
    });
}

interface GenStream {
  version: number;
  commands: GenCommand[];
}

function streamArbOf(vals: Record<Kind, fc.Arbitrary<Val>>, maxLength: number): fc.Arbitrary<GenStream> {
  return fc.constantFrom(1, 2, 3).chain((version) => {
    const middle = Array.from({ length: MAX_CMD[version]! }, (_, i) => i + 1).filter(
      (t) => t !== Cmd.SUBVOL && t !== Cmd.SNAPSHOT && t !== Cmd.END,
    );
    return fc
      .tuple(
        fc.constantFrom(Cmd.SUBVOL, Cmd.SNAPSHOT).chain((t) => commandArb(t, version, vals)),
        fc.array(fc.constantFrom(...middle).chain((t) => commandArb(t, version, vals)), { maxLength }),
      )
      .map(([first, rest]) => ({ version, commands: [first, ...rest, { type: Cmd.END, attrs: [] }] }));
  });
}
const streamArb = streamArbOf(VAL, 12);

/** Encodes a generated stream and the commands the parser must decode from it. */
function encode(s: GenStream, wantData: boolean): { buf: Buffer; want: SendCommand[] } {
  const parts = [header(s.version)];
  const want: SendCommand[] = [];
  let offset = 17;
  for (const c of s.commands) {
    const body = Buffer.concat(c.attrs.map((a) => tlv(a.type, a.val.bytes, a.type === Attr.DATA && s.version >= 2)));
    const cmd = command(c.type, body);
    const w: SendCommand = { offset, type: c.type, name: CMD_NAMES[c.type]! };
    for (const a of c.attrs) {
      const { key, kind } = KEY[a.type]!;
      if (kind === 'ignored') continue;
      if (kind === 'data') {
        w.dataLength = (a.val.value as Buffer).length;
        if (wantData) w.data = a.val.value as Buffer;
        continue;
      }
      (w as unknown as Record<string, unknown>)[key] = a.val.value;
    }
    want.push(w);
    parts.push(cmd);
    offset += cmd.length;
  }
  return { buf: Buffer.concat(parts), want };
}

/** The commands of a stream as (type, body), from its own headers. */
function splitCommands(buf: Buffer): { version: number; cmds: { type: number; body: Buffer }[] } {
  const cmds: { type: number; body: Buffer }[] = [];
  for (let at = 17; at < buf.length; ) {
    const len = buf.readUInt32LE(at);
    cmds.push({ type: buf.readUInt16LE(at + 4), body: Buffer.from(buf.subarray(at + 10, at + 10 + len)) });
    at += 10 + len;
  }
  return { version: buf.readUInt32LE(13), cmds };
}

const joinStream = (version: number, cmds: { type: number; body: Buffer }[]) =>
  Buffer.concat([header(version), ...cmds.map((c) => command(c.type, c.body))]);

const sizesArb = fc.oneof(
  fc.constant<number[]>([1 << 20]),
  fc.array(fc.integer({ min: 1, max: 64 }), { minLength: 1, maxLength: 5 }),
  fc.array(fc.integer({ min: 1, max: 9000 }), { minLength: 1, maxLength: 5 }),
);
const kindArb = fc.constantFrom<SourceKind>('array', 'generator', 'readable');

// ---------------------------------------------------------------------------------------------

describe('fuzz: send streams made of random commands', () => {
  it('decode back to exactly the encoded commands, whatever the chunking', async () => {
    await fc.assert(
      fc.asyncProperty(streamArb, fc.boolean(), sizesArb, kindArb, async (s, wantData, sizes, kind) => {
        const { buf, want } = encode(s, wantData);
        const parts = chunked(buf, sizes);
        const got = await guarded(readWhole(parts, kind, wantData), 'readSendStream');
        expect(got.cmds).toEqual(want);
        const first = s.commands[0]!;
        expect(got.summary).toEqual({
          version: s.version,
          commands: s.commands.length,
          bytes: buf.length,
          subvolume: want[0]!.path,
          uuid: want[0]!.uuid,
          ...(first.type === Cmd.SNAPSHOT ? { parentUuid: want[0]!.cloneUuid, parentCtransid: want[0]!.cloneCtransid } : {}),
        });
        const all = await runAll(buf, sizes, kind);
        expect(all.verify.ok).toBe(true);
      }),
      { seed: 4242, numRuns: 250, endOnFailure: true },
    );
  });

  it('data and xattr values do not alias the input chunks (the caller may reuse them)', async () => {
    await fc.assert(
      fc.asyncProperty(streamArb, sizesArb, async (s, sizes) => {
        const { buf, want } = encode(s, true);
        const parts = chunked(Buffer.from(buf), sizes);
        const cmds: SendCommand[] = [];
        for await (const c of readSendStream(parts, { wantData: true })) cmds.push(c);
        for (const p of parts) p.fill(0xa5);
        for (const [i, c] of cmds.entries()) if (c.data) expect(c.data).toEqual(want[i]!.data);
      }),
      { seed: 4243, numRuns: 100, endOnFailure: true },
    );
  });
});

describe('fuzz: random bytes', () => {
  it('anything at all: an SbkError of exit code 3 or 4, the same from every entry point', async () => {
    const prefix = fc.oneof(
      fc.constant(Buffer.alloc(0)),
      fc.constantFrom(1, 2, 3).map(header),
      fc.nat({ max: 0xffffffff }).map(header),
      fc.nat(17).map((n) => header(1).subarray(0, n)),
      fc.constantFrom('{"sbk":"backup"}\n', 'ustar\0', '\x1f\x8b\x08\0', 'hello\n').map((s) => Buffer.from(s, 'latin1')),
    );
    // Random command headers: lengths from 0 to 4 GiB, any type, any CRC.
    const cmdHead = fc
      .tuple(fc.oneof(fc.nat(64), fc.nat({ max: 0xffffffff }), fc.constantFrom(65536, 65537, 16 << 20, (16 << 20) + 1)), fc.nat(0xffff), fc.nat({ max: 0xffffffff }))
      .map(([len, type, crc]) => {
        const b = Buffer.alloc(10);
        b.writeUInt32LE(len, 0);
        b.writeUInt16LE(type, 4);
        b.writeUInt32LE(crc, 6);
        return b;
      });
    const tail = fc.array(fc.oneof(cmdHead, fc.uint8Array({ maxLength: 200 }).map((a) => Buffer.from(a))), { maxLength: 4 });
    await fc.assert(
      fc.asyncProperty(prefix, tail, sizesArb, kindArb, async (p, t, sizes, kind) => {
        const buf = Buffer.concat([p, ...t]);
        const { verify } = await runAll(buf, sizes, kind);
        expect(verify.ok).toBe(false);
      }),
      { seed: 4244, numRuns: 400, endOnFailure: true },
    );
  });
});

describe('fuzz: recorded streams damaged byte by byte', () => {
  const mutation = fc.oneof(
    fc.record({ op: fc.constant('flip' as const), at: fc.nat(30000), mask: fc.integer({ min: 1, max: 255 }) }),
    fc.record({ op: fc.constant('set' as const), at: fc.nat(30000), mask: fc.nat(255) }),
    fc.record({ op: fc.constant('cut' as const), at: fc.nat(30000), mask: fc.constant(0) }),
    fc.record({ op: fc.constant('delete' as const), at: fc.nat(30000), mask: fc.integer({ min: 1, max: 40 }) }),
    fc.record({ op: fc.constant('insert' as const), at: fc.nat(30000), mask: fc.integer({ min: 1, max: 255 }) }),
    fc.record({ op: fc.constant('append' as const), at: fc.constant(0), mask: fc.nat(255) }),
    fc.record({ op: fc.constant('u32' as const), at: fc.nat(30000), mask: fc.nat({ max: 0xffffffff }) }),
  );
  type Mutation = { op: 'flip' | 'set' | 'cut' | 'delete' | 'insert' | 'append' | 'u32'; at: number; mask: number };

  function mutate(good: Buffer, ms: Mutation[]): Buffer {
    let b = Buffer.from(good);
    for (const m of ms) {
      const at = b.length ? m.at % b.length : 0;
      switch (m.op) {
        case 'flip': if (b.length) b[at] ^= m.mask; break;
        case 'set': if (b.length) b[at] = m.mask; break;
        case 'cut': b = b.subarray(0, at); break;
        case 'delete': b = Buffer.concat([b.subarray(0, at), b.subarray(at + m.mask)]); break;
        case 'insert': b = Buffer.concat([b.subarray(0, at), Buffer.alloc(1 + (m.mask % 7), m.mask), b.subarray(at)]); break;
        case 'append': b = Buffer.concat([b, Buffer.from([m.mask])]); break;
        case 'u32': if (b.length >= 4) b.writeUInt32LE(m.mask, Math.min(at, b.length - 4)); break;
      }
    }
    return b;
  }

  /** True when `bad` is the header of `good` followed by whole commands of `good`. */
  function wholeCommandsOf(bad: Buffer, good: Buffer): boolean {
    if (bad.length < 17 || !bad.subarray(0, 17).equals(good.subarray(0, 17))) return false;
    const known = new Set(splitCommands(good).cmds.map((c) => command(c.type, c.body).toString('latin1')));
    for (let at = 17; at < bad.length; ) {
      if (at + 10 > bad.length) return false;
      const end = at + 10 + bad.readUInt32LE(at);
      if (end > bad.length || !known.has(bad.subarray(at, end).toString('latin1'))) return false;
      at = end;
    }
    return true;
  }

  it('an SbkError (3 or 4) from every entry point alike, or the untouched stream', async () => {
    let failed = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...STREAMS), fc.array(mutation, { minLength: 1, maxLength: 3 }), sizesArb, kindArb, async (name, ms, sizes, kind) => {
        const good = FIXTURES.get(name)!;
        const bad = mutate(good, ms);
        const { read, verify } = await runAll(bad, sizes, kind);
        if (bad.equals(good)) expect(read.ok && verify.ok).toBe(true);
        // A change after the stream header is always caught: every byte is under a CRC32C
        // (lengths, types and checksums included) or is a cut, or bytes after END.
        // (Only dropping or repeating whole commands keeps every CRC right.)
        else if ((bad.length < 17 || bad.subarray(0, 17).equals(good.subarray(0, 17))) && !wholeCommandsOf(bad, good)) expect(verify.ok).toBe(false);
        if (!verify.ok) failed++;
      }),
      { seed: 4245, numRuns: 400, endOnFailure: true },
    );
    expect(failed).toBeGreaterThan(350);
  });
});

describe('fuzz: recorded streams damaged command by command, checksums recomputed', () => {
  type Op =
    | { op: 'swap' | 'dup' | 'move'; i: number; j: number }
    | { op: 'remove'; i: number }
    | { op: 'type'; i: number; type: number }
    | { op: 'flip'; i: number; at: number; mask: number }
    | { op: 'cut'; i: number; at: number }
    | { op: 'grow'; i: number; bytes: Uint8Array }
    | { op: 'tlvlen' | 'tlvtype'; i: number; k: number; value: number }
    | { op: 'body'; i: number; bytes: Uint8Array }
    | { op: 'version'; version: number };
  const idx = fc.nat(1000);
  const opArb: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ op: fc.constantFrom('swap' as const, 'dup' as const, 'move' as const), i: idx, j: idx }),
    fc.record({ op: fc.constant('remove' as const), i: idx }),
    fc.record({ op: fc.constant('type' as const), i: idx, type: fc.oneof(fc.nat(30), fc.nat(0xffff)) }),
    fc.record({ op: fc.constant('flip' as const), i: idx, at: fc.nat(70000), mask: fc.integer({ min: 1, max: 255 }) }),
    fc.record({ op: fc.constant('cut' as const), i: idx, at: fc.nat(70000) }),
    fc.record({ op: fc.constant('grow' as const), i: idx, bytes: fc.uint8Array({ minLength: 1, maxLength: 12 }) }),
    fc.record({ op: fc.constantFrom('tlvlen' as const, 'tlvtype' as const), i: idx, k: fc.nat(20), value: fc.oneof(fc.nat(40), fc.nat(0xffff)) }),
    fc.record({ op: fc.constant('body' as const), i: idx, bytes: fc.uint8Array({ maxLength: 120 }) }),
    fc.record({ op: fc.constant('version' as const), version: fc.oneof(fc.constantFrom(1, 2, 3), fc.nat({ max: 0xffffffff })) }),
  );

  /** Offsets of the TLV headers of a (well-formed) body, for the given version. */
  function tlvOffsets(body: Buffer, version: number): number[] {
    const out: number[] = [];
    for (let at = 0; at + 2 <= body.length; ) {
      out.push(at);
      const t = body.readUInt16LE(at);
      if (t === Attr.DATA && version >= 2) break;
      if (at + 4 > body.length) break;
      at += 4 + body.readUInt16LE(at + 2);
    }
    return out;
  }

  function apply(good: Buffer, ops: Op[]): Buffer {
    const s = splitCommands(good);
    let { version } = s;
    const cmds = s.cmds;
    for (const o of ops) {
      if (o.op === 'version') {
        version = o.version;
        continue;
      }
      if (cmds.length === 0) break;
      const i = o.i % cmds.length;
      const c = cmds[i]!;
      switch (o.op) {
        case 'swap': {
          const j = o.j % cmds.length;
          [cmds[i], cmds[j]] = [cmds[j]!, c];
          break;
        }
        case 'dup': cmds.splice(o.j % (cmds.length + 1), 0, { type: c.type, body: Buffer.from(c.body) }); break;
        case 'move': cmds.splice(i, 1); cmds.splice(o.j % (cmds.length + 1), 0, c); break;
        case 'remove': cmds.splice(i, 1); break;
        case 'type': c.type = o.type; break;
        case 'flip': if (c.body.length) c.body[o.at % c.body.length] ^= o.mask; break;
        case 'cut': c.body = c.body.subarray(0, o.at % (c.body.length + 1)); break;
        case 'grow': c.body = Buffer.concat([c.body, o.bytes]); break;
        case 'body': c.body = Buffer.from(o.bytes); break;
        case 'tlvlen':
        case 'tlvtype': {
          const offs = tlvOffsets(c.body, version);
          if (!offs.length) break;
          const at = offs[o.k % offs.length]! + (o.op === 'tlvlen' ? 2 : 0);
          if (at + 2 <= c.body.length) c.body.writeUInt16LE(o.value, at);
          break;
        }
      }
    }
    return joinStream(version >>> 0, cmds);
  }

  it('the test writer re-encodes every recorded stream byte for byte', () => {
    for (const [name, good] of FIXTURES) {
      const s = splitCommands(good);
      expect(joinStream(s.version, s.cmds).equals(good), name).toBe(true);
    }
  });

  it('decoding past the CRC: an SbkError (3 or 4) or a well-formed stream, every entry point agreeing', async () => {
    let accepted = 0;
    let rejected = 0;
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...STREAMS), fc.array(opArb, { minLength: 1, maxLength: 4 }), sizesArb, kindArb, async (name, ops, sizes, kind) => {
        const bad = apply(FIXTURES.get(name)!, ops);
        const { read } = await runAll(bad, sizes, kind);
        if (read.ok) accepted++;
        else rejected++;
      }),
      { seed: 4246, numRuns: 400, endOnFailure: true },
    );
    // Both sides must be reached, or the mutations test nothing.
    expect(rejected).toBeGreaterThan(100);
    expect(accepted).toBeGreaterThan(10);
  });

  it('every command-level mutation of the middle of a stream decodes or fails cleanly, also with data wanted', async () => {
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...STREAMS), fc.array(opArb, { minLength: 1, maxLength: 3 }), sizesArb, async (name, ops, sizes) => {
        const bad = apply(FIXTURES.get(name)!, ops);
        const parts = chunked(bad, sizes);
        const plain = await settle('readSendStream', () => readWhole(parts, 'array'));
        const withData = await settle('readSendStream (wantData)', () => readWhole(parts, 'array', true));
        expect(withData.ok ? 'ok' : withData.err.message).toBe(plain.ok ? 'ok' : plain.err.message);
        if (plain.ok && withData.ok) {
          const strip = (cs: SendCommand[]) => cs.map(({ data: _d, ...rest }) => rest);
          expect(strip(withData.value.cmds)).toEqual(strip(plain.value.cmds));
          for (const c of withData.value.cmds) if (c.dataLength !== undefined) expect(c.data?.length).toBe(c.dataLength);
        }
      }),
      { seed: 4247, numRuns: 200, endOnFailure: true },
    );
  });
});

describe('fuzz: the changelog\'s replay of random streams (sbk-changelog --from-stream)', () => {
  // Paths from a small alphabet, so that commands meet: renames onto, links to and removals of
  // what earlier commands made or named, the root ('') included.
  const pathArb = fc
    .array(fc.constantFrom('a', 'b', 'c', '', '\xff\n'), { maxLength: 3 })
    .map((parts) => parts.join('/'))
    .map((p) => ({ bytes: Buffer.from(p, 'latin1'), value: p }));
  const small = fc.tuple(fc.integer({ min: 0, max: 3 }), fc.nat(3)).map(([sec, nsec]) => {
    const b = Buffer.alloc(12);
    b.writeBigInt64LE(BigInt(sec));
    b.writeUInt32LE(nsec, 8);
    return { bytes: b, value: { sec, nsec } };
  });
  const modelStreams = streamArbOf({ ...VAL, str: pathArb, ts: small }, 25);

  it('a model or an SbkError (4), never a crash or an endless walk; its changes format and parse back', async () => {
    let refused = 0;
    await fc.assert(
      fc.asyncProperty(modelStreams, fc.boolean(), async (s, allChanges) => {
        const { buf } = encode(s, false);
        const r = await settle(
          'modelFromStream',
          async () => {
            const model = await modelFromStream([buf]);
            return changesFromModel(model, undefined, { allChanges, warn: () => {} });
          },
          [ExitCode.corrupt],
        );
        if (!r.ok) {
          refused++;
          return;
        }
        const lines = toLines(r.value, '/srv');
        const text = formatChangelog(lines);
        const back = text.split('\n').slice(0, -1).map((l) => parseChangelogLine(l));
        expect(back).not.toContain(undefined);
        expect(back.map((l) => `${l!.action} ${l!.path}`).sort()).toEqual(lines.map((l) => `${l.action} ${l.path}`).sort());
      }),
      { seed: 4248, numRuns: 300, endOnFailure: true },
    );
    expect(refused).toBeGreaterThan(30);
  });
});

describe('regressions found by fuzzing', () => {
  it('a short input that is not a send stream is bad input (3), not a corrupt stream (4)', async () => {
    for (const text of ['hello\n', '{"sbk":"backup"}', '\x1f\x8b', 'btrfs-strea\0x', 'x']) {
      const err = await verifySendStream([Buffer.from(text, 'latin1')]).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err, JSON.stringify(text)).toBeInstanceOf(SbkError);
      expect((err as SbkError).exitCode, JSON.stringify(text)).toBe(ExitCode.badInput);
      expect((err as SbkError).message).toMatch(/^expected a btrfs send stream/);
    }
    // A cut inside a real header is still a truncated stream.
    const err = await verifySendStream([header(1).subarray(0, 15)]).catch((e: unknown) => e);
    expect((err as SbkError).exitCode).toBe(ExitCode.corrupt);
    expect((err as SbkError).message).toMatch(/truncated in the 17-byte stream header/);
  });

  it('a stream that hard-links a directory into itself is refused, not walked forever', async () => {
    const s = (x: string) => Buffer.from(x, 'latin1');
    const snap = command(Cmd.SNAPSHOT, Buffer.concat([tlv(Attr.PATH, s('v')), tlv(Attr.UUID, Buffer.alloc(16)), tlv(Attr.CTRANSID, le64(1)), tlv(Attr.CLONE_UUID, Buffer.alloc(16, 1)), tlv(Attr.CLONE_CTRANSID, le64(1))]));
    for (const [path, link] of [['a/x', 'a'], ['x', ''], ['a/b/c', 'a']]) {
      const cmds = [snap, command(Cmd.LINK, Buffer.concat([tlv(Attr.PATH, s(path!)), tlv(Attr.PATH_LINK, s(link!))])), command(Cmd.END, Buffer.alloc(0))];
      const err = await modelFromStream([Buffer.concat([header(1), ...cmds])]).catch((e: unknown) => e);
      expect(err, `${path} -> ${link}`).toBeInstanceOf(SbkError);
      expect((err as SbkError).exitCode).toBe(ExitCode.corrupt);
      expect((err as SbkError).message).toMatch(/has a second name/);
    }
  });
});
