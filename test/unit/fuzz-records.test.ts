// Property-based fuzzing of the backup-record (NDJSON) reader: random bytes,
// random JSON, and valid records mutated field by field or byte by byte. Whatever comes in,
// readRecords yields valid records or fails with an SbkError of exit code 3 naming the line;
// never another exception, never a hang. Valid records round-trip through formatRecord,
// whatever the chunking, blank lines and line ends around them. Fixed seeds.
import { Readable } from 'node:stream';
import fc from 'fast-check';
import { describe, it, expect } from 'vitest';
import { readRecords, formatRecord, checkRecord, RECORD_FORMAT, type BackupRecord } from '../../src/formats/record.js';
import { isValidContainerName, isValidVolumeName } from '../../src/core/layout.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';
import { chunked, editJson as mutateJson, guarded, settler, type JsonEdit as FieldMutation, type Outcome } from '../helpers/fuzz.js';

const settle = settler([ExitCode.badInput]);

/** A byte stream of `buf` in chunks of `sizes`. */
const streamOf = (buf: Buffer, sizes: number[]) => Readable.from(chunked(buf, sizes), { objectMode: false });

async function readAll(buf: Buffer, sizes: number[]): Promise<BackupRecord[]> {
  const out: BackupRecord[] = [];
  for await (const r of readRecords(streamOf(buf, sizes))) out.push(r);
  return out;
}

/** Reads `buf`; checks that any failure is a one-line SbkError 3 naming a line, and that the records are valid. */
async function outcome(buf: Buffer, sizes: number[]): Promise<Outcome<BackupRecord[]>> {
  const r = await settle('readRecords', () => readAll(buf, sizes));
  if (!r.ok) {
    // Either the input as a whole is refused up front, or one line of it is.
    expect(r.err.message).toMatch(/^(expected NDJSON backup records|record on line \d+: )/);
  } else {
    for (const rec of r.value) expect(checkRecord(rec, 1)).toBe(rec);
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// Valid records

const BK = '/var/snap/subutai/common/lxc/backups';
const LXC = '/var/snap/subutai/common/lxc';

const containerArb = fc
  .stringMatching(/^[A-Za-z0-9][A-Za-z0-9_.+-]{0,30}$/)
  .filter((c) => isValidContainerName(c));
const volumeArb = fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,20}$/).filter((v) => isValidVolumeName(v));
const timeArb = fc.integer({ min: 0, max: 99_999_999_999 });
const uuidArb = fc.uuid();
const absArb = fc.string({ maxLength: 30 }).map((s) => '/' + s.replace(/\0/g, ''));

function setRef(container: string, time: number, full: boolean) {
  const name = `${container}_${time}${full ? '_Full' : ''}`;
  return { time, full, name, set: `${BK}/${container}/${time}${full ? '_Full' : ''}` };
}

const recordArb: fc.Arbitrary<BackupRecord> = fc
  .record({
    container: containerArb,
    time: timeArb,
    full: fc.boolean(),
    parentTime: timeArb,
    hasPrevious: fc.boolean(),
    volumes: fc.uniqueArray(fc.record({ name: volumeArb, uuid: uuidArb, parentUuid: fc.option(uuidArb, { nil: null }), mount: absArb, source: absArb }), {
      minLength: 1,
      maxLength: 5,
      selector: (v) => v.name,
    }),
    changelog: fc.option(absArb, { nil: undefined }),
    taken: fc.option(
      fc.oneof(
        fc.record({ consistency: fc.constant('frozen' as const), frozenMs: fc.option(fc.nat(), { nil: undefined }) }),
        fc.record({ consistency: fc.constantFrom('stopped' as const, 'live' as const) }),
      ),
      { nil: undefined },
    ),
  })
  .map((o) => {
    const self = setRef(o.container, o.time, o.full);
    const parent = o.full ? null : setRef(o.container, o.parentTime, true);
    const r: BackupRecord = {
      sbk: 'backup',
      format: RECORD_FORMAT,
      container: o.container,
      time: o.time,
      full: o.full,
      name: self.name,
      set: self.set,
      containerDir: `${LXC}/${o.container}`,
      parent,
      previous: o.hasPrevious ? setRef(o.container, o.parentTime, false) : parent,
      volumes: o.volumes.map((v) => ({ ...v, snapshot: `${self.set}/${v.name}` })),
    };
    if (o.taken) {
      r.consistency = o.taken.consistency;
      if ('frozenMs' in o.taken && o.taken.frozenMs !== undefined) r.frozenMs = o.taken.frozenMs;
    }
    if (o.changelog !== undefined) r.changelog = o.changelog;
    return r;
  });

const sizesArb = fc.oneof(
  fc.constant<number[]>([1 << 20]),
  fc.array(fc.integer({ min: 1, max: 16 }), { minLength: 1, maxLength: 4 }),
  fc.array(fc.integer({ min: 1, max: 1500 }), { minLength: 1, maxLength: 4 }),
);

/** Blank lines ('' or white space) and line ends, as a shell pipeline may add them. */
const blankArb = fc.array(fc.constantFrom('', ' ', '\t', '\r'), { maxLength: 2 }).map((a) => a.map((x) => x + '\n').join(''));

describe('fuzz: valid records', () => {
  it('round-trip through formatRecord and readRecords, with blank lines, CRLF and any chunking', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(recordArb, blankArb, fc.boolean()), { minLength: 1, maxLength: 6 }),
        fc.boolean(),
        sizesArb,
        async (items, finalNewline, sizes) => {
          let text = '';
          for (const [r, blank, crlf] of items) {
            const line = formatRecord(r);
            text += blank + (crlf ? line.replace(/\n$/, '\r\n') : line);
          }
          if (!finalNewline) text = text.replace(/\r?\n$/, '');
          const got = await guarded(readAll(Buffer.from(text, 'utf8'), sizes), 'readRecords');
          expect(got).toEqual(items.map(([r]) => r));
        },
      ),
      { seed: 4242, numRuns: 200, endOnFailure: true },
    );
  });

  it('checkRecord accepts every generated record and returns it as is', () => {
    fc.assert(
      fc.property(recordArb, (r) => {
        expect(checkRecord(JSON.parse(formatRecord(r)), 1)).toEqual(r);
      }),
      { seed: 4243, numRuns: 300 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Damaged and hostile input (JSON edited with editJson, as mutateJson, from test/helpers/fuzz.ts)

const jsonArb = fc.jsonValue({ maxDepth: 3 });
const interesting = fc.oneof(
  jsonArb,
  fc.constantFrom(null, true, false, 0, -1, 1.5, 2 ** 53, -0, '', '/', 'backup', 'manifest', 'frozen', 'live', 'stopped', '../x', 'meta', '..', 'a b', '/x\0y', [], {}),
  fc.string(),
);
const fieldMutation: fc.Arbitrary<FieldMutation> = fc.record({
  op: fc.constantFrom('set' as const, 'delete' as const, 'add' as const),
  pick: fc.nat(),
  value: interesting,
  key: fc.oneof(
    fc.constantFrom('sbk', 'format', 'time', 'name', 'parent', 'volumes', 'changelog', 'consistency', 'frozenMs', '__proto__', 'constructor', 'toString'),
    fc.string({ maxLength: 8 }),
  ),
});

describe('fuzz: damaged records', () => {
  it('a record mutated field by field: valid and read back as is, or an SbkError (3) naming its line', async () => {
    let refused = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.array(recordArb, { minLength: 1, maxLength: 3 }),
        fc.nat(),
        fc.array(fieldMutation, { minLength: 1, maxLength: 3 }),
        sizesArb,
        async (records, which, ms, sizes) => {
          const i = which % records.length;
          let bad: unknown = JSON.parse(JSON.stringify(records[i]));
          for (const m of ms) bad = mutateJson(bad, m);
          const lines = records.map((r, k) => (k === i ? JSON.stringify(bad) + '\n' : formatRecord(r)));
          const r = await outcome(Buffer.from(lines.join(''), 'utf8'), sizes);
          // The oracle: is the mutated line a valid record on its own?
          let valid = true;
          try {
            checkRecord(JSON.parse(lines[i]!), i + 1);
          } catch (err) {
            if (!(err instanceof SbkError) && !(err instanceof SyntaxError)) throw err;
            valid = false;
          }
          if (valid) {
            expect(r.ok).toBe(true);
            expect((r as { value: BackupRecord[] }).value).toEqual(lines.map((l) => JSON.parse(l)));
          } else {
            refused++;
            expect(r.ok).toBe(false);
            // Line 1 may be refused up front (not JSON at all); otherwise the bad line is named.
            const msg = (r as { err: SbkError }).err.message;
            if (msg.startsWith('record on line')) expect(msg).toMatch(new RegExp(`^record on line ${i + 1}: `));
          }
        },
      ),
      { seed: 4244, numRuns: 400, endOnFailure: true },
    );
    expect(refused).toBeGreaterThan(150);
  });

  it('checkRecord on any JSON value: the record itself, or an SbkError (3)', () => {
    fc.assert(
      fc.property(fc.oneof(jsonArb, recordArb.chain((r) => fc.array(fieldMutation, { minLength: 1, maxLength: 4 }).map((ms) => ms.reduce<unknown>(mutateJson, r)))), (v) => {
        try {
          expect(checkRecord(v, 7)).toBe(v);
        } catch (err) {
          if (!(err instanceof SbkError)) throw err;
          expect(err.exitCode).toBe(ExitCode.badInput);
          expect(err.message).toMatch(/^record on line 7: /);
          expect(err.message).not.toMatch(/[\n\r]/);
        }
      }),
      { seed: 4245, numRuns: 1000 },
    );
  });

  it('records damaged byte by byte: valid records or an SbkError (3)', async () => {
    const mutation = fc.record({
      op: fc.constantFrom('flip', 'set', 'cut', 'delete', 'insert'),
      at: fc.nat(),
      value: fc.nat(255),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(recordArb, { minLength: 1, maxLength: 3 }), fc.array(mutation, { minLength: 1, maxLength: 4 }), sizesArb, async (records, ms, sizes) => {
        let b = Buffer.from(records.map(formatRecord).join(''), 'utf8');
        for (const m of ms) {
          const at = b.length ? m.at % b.length : 0;
          if (m.op === 'flip') b[at] ^= 1 << m.value % 8;
          else if (m.op === 'set') b[at] = m.value;
          else if (m.op === 'cut') b = b.subarray(0, at);
          else if (m.op === 'delete') b = Buffer.concat([b.subarray(0, at), b.subarray(at + 1 + (m.value % 20))]);
          else b = Buffer.concat([b.subarray(0, at), Buffer.from([m.value]), b.subarray(at)]);
        }
        await outcome(b, sizes);
      }),
      { seed: 4246, numRuns: 400, endOnFailure: true },
    );
  });

  it('random bytes, text and JSON lines: valid records or an SbkError (3)', async () => {
    const lineArb = fc.oneof(
      jsonArb.map((v) => JSON.stringify(v) ?? 'null'),
      fc.string({ unit: 'binary', maxLength: 60 }),
      fc.constantFrom('{', '}', '{}', '{"sbk":"backup"}', '[]', '\u2028', '\ufeff{}', '{"a":1}{"b":2}', ' '.repeat(600) + '{}'),
    );
    const inputArb = fc.oneof(
      fc.uint8Array({ maxLength: 700 }).map((a) => Buffer.from(a)),
      fc.array(lineArb, { maxLength: 6 }).map((ls) => Buffer.from(ls.join('\n'), 'utf8')),
      fc.tuple(fc.uint8Array({ maxLength: 3 }), recordArb).map(([pre, r]) => Buffer.concat([Buffer.from(pre), Buffer.from(formatRecord(r))])),
    );
    await fc.assert(
      fc.asyncProperty(inputArb, sizesArb, async (buf, sizes) => {
        await outcome(buf, sizes);
      }),
      { seed: 4247, numRuns: 500, endOnFailure: true },
    );
  });

  it('an input that fails after any number of bytes: that error (or an SbkError), never a hang', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(recordArb, { maxLength: 3 }), fc.nat(), sizesArb, async (records, cut, sizes) => {
        const text = Buffer.from(records.map(formatRecord).join(''), 'utf8');
        const head = text.subarray(0, text.length ? cut % (text.length + 1) : 0);
        const boom = new Error('EIO: the disk went away');
        const input = Readable.from(
          (async function* () {
            for (const c of chunked(head, sizes)) yield c;
            throw boom;
          })(),
          { objectMode: false },
        );
        const out: BackupRecord[] = [];
        const err = await guarded(
          (async () => {
            for await (const r of readRecords(input)) out.push(r);
          })().then(
            () => undefined,
            (e: unknown) => e,
          ),
          'readRecords on a failing input',
        );
        expect(err === boom || (err instanceof SbkError && err.exitCode === ExitCode.badInput)).toBe(true);
        expect(out).toEqual(records.slice(0, out.length));
      }),
      { seed: 4248, numRuns: 150, endOnFailure: true },
    );
  });
});
