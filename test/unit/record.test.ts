// Backup records (src/formats/record.ts): the NDJSON lines sbk-snap writes and the stages read:
// valid input, malformed records named by line, other kinds of input refused up front, a
// failing input.
import { Readable, PassThrough } from 'node:stream';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import { describe, it, expect } from 'vitest';
import { readRecords, formatRecord, checkRecord, RECORD_FORMAT, type BackupRecord } from '../../src/formats/record.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';

const BK = '/var/snap/subutai/common/lxc/backups';
const CD = '/var/snap/subutai/common/lxc/c1';

function fullRecord(time = 1477297700, container = 'c1'): BackupRecord {
  return {
    sbk: 'backup',
    format: RECORD_FORMAT,
    container,
    time,
    full: true,
    name: `${container}_${time}_Full`,
    set: `${BK}/${container}/${time}_Full`,
    containerDir: `/var/snap/subutai/common/lxc/${container}`,
    parent: null,
    previous: null,
    volumes: ['rootfs', 'home', 'opt', 'var'].map((v, i) => ({
      name: v,
      mount: v === 'rootfs' ? '/' : `/${v}`,
      source: `/var/snap/subutai/common/lxc/${container}/${v}`,
      snapshot: `${BK}/${container}/${time}_Full/${v}`,
      uuid: `0c0e6f8a-2b7d-4e4b-9a51-00000000000${i}`,
      parentUuid: null,
    })),
  };
}

function incrementalRecord(time = 1477297800): BackupRecord {
  const parent = fullRecord();
  return {
    ...fullRecord(time),
    full: false,
    name: `c1_${time}`,
    set: `${BK}/c1/${time}`,
    parent: { time: parent.time, full: true, name: parent.name, set: parent.set },
    previous: { time: parent.time, full: true, name: parent.name, set: parent.set },
    volumes: parent.volumes.map((v, i) => ({
      ...v,
      snapshot: `${BK}/c1/${time}/${v.name}`,
      uuid: `7d2a1c44-0000-4000-8000-00000000000${i}`,
      parentUuid: v.uuid,
    })),
    changelog: `${BK}/c1/${time}/.sbk-changelog.txt`,
  };
}

/** A stream that hands out `data` in chunks of `size` bytes (1: byte by byte). */
function chunked(data: Buffer | string, size = 64 * 1024): Readable {
  const buf = Buffer.from(data);
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts, { objectMode: false });
}

async function readAll(input: Readable): Promise<BackupRecord[]> {
  const out: BackupRecord[] = [];
  for await (const r of readRecords(input)) out.push(r);
  return out;
}

async function failure(input: Readable): Promise<SbkError> {
  const err = await readAll(input).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SbkError);
  return err as SbkError;
}

const lines = (...rs: unknown[]) => rs.map((r) => (typeof r === 'string' ? r + '\n' : JSON.stringify(r) + '\n')).join('');

describe('readRecords: valid input', () => {
  it('reads one record', async () => {
    const r = fullRecord();
    expect(await readAll(chunked(formatRecord(r)))).toEqual([r]);
  });

  it('reads several records, Full and incremental, in order', async () => {
    const rs = [fullRecord(), incrementalRecord(), fullRecord(1477297900, 'web_2')];
    expect(await readAll(chunked(rs.map(formatRecord).join('')))).toEqual(rs);
  });

  it('reads the same whatever the chunking (byte by byte, across the 512-byte sniff)', async () => {
    const rs = [fullRecord(), incrementalRecord()];
    const text = rs.map(formatRecord).join('');
    for (const size of [1, 7, 511, 512, 513, text.length]) expect(await readAll(chunked(text, size))).toEqual(rs);
  });

  it('yields nothing for empty input', async () => {
    expect(await readAll(chunked(''))).toEqual([]);
    expect(await readAll(Readable.from([]))).toEqual([]);
  });

  it('ignores blank lines, leading, between and trailing, and CRLF line ends', async () => {
    const a = fullRecord();
    const b = incrementalRecord();
    const text = `\n\n${JSON.stringify(a)}\r\n\n   \n\t\n${JSON.stringify(b)}\n\n`;
    expect(await readAll(chunked(text, 5))).toEqual([a, b]);
  });

  it('yields nothing for input of blank lines only', async () => {
    expect(await readAll(chunked('\n'))).toEqual([]);
    expect(await readAll(chunked('\n \r\n\t\n'))).toEqual([]);
  });

  it('accepts a last record without its final newline', async () => {
    const r = fullRecord();
    expect(await readAll(chunked(JSON.stringify(r)))).toEqual([r]);
  });

  it('reads records from a slow pipe', async () => {
    const p = new PassThrough();
    const text = formatRecord(fullRecord()) + formatRecord(incrementalRecord());
    let i = 0;
    const timer = setInterval(() => {
      if (i >= text.length) {
        clearInterval(timer);
        p.end();
        return;
      }
      p.write(text.slice(i, i + 300));
      i += 300;
    }, 1);
    expect(await readAll(p)).toEqual([fullRecord(), incrementalRecord()]);
  });

  it('yields each record as it arrives, before the input ends', async () => {
    const p = new PassThrough();
    p.write(formatRecord(fullRecord()));
    const it = readRecords(p)[Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.value).toEqual(fullRecord());
    p.end(formatRecord(incrementalRecord()));
    expect((await it.next()).value).toEqual(incrementalRecord());
    expect((await it.next()).done).toBe(true);
  });

  it('formatRecord writes one line', () => {
    const text = formatRecord(incrementalRecord());
    expect(text.endsWith('\n')).toBe(true);
    expect(text.slice(0, -1)).not.toContain('\n');
    expect(JSON.parse(text)).toEqual(incrementalRecord());
  });
});

describe('readRecords: malformed records name their line', () => {
  it('malformed JSON', async () => {
    const err = await failure(chunked(lines(fullRecord(), '', '{"sbk": "backup",,}')));
    expect(err.exitCode).toBe(ExitCode.badInput);
    expect(err.message).toMatch(/^record on line 3: malformed JSON \(/);
    expect(err.message).not.toContain('\n');
  });

  it('yields the records before the bad line, then fails', async () => {
    const got: BackupRecord[] = [];
    const err = await (async () => {
      for await (const r of readRecords(chunked(lines(fullRecord(), incrementalRecord(), '{oops')))) got.push(r);
    })().catch((e: unknown) => e);
    expect(got).toHaveLength(2);
    expect((err as SbkError).message).toMatch(/^record on line 3: malformed JSON/);
  });

  it('a truncated last line is an error, wherever it is cut', async () => {
    const good = formatRecord(fullRecord());
    const last = JSON.stringify(incrementalRecord());
    for (const cut of [1, 2, 10, Math.floor(last.length / 2), last.length - 2, last.length - 1]) {
      const err = await failure(chunked(good + last.slice(0, cut), 100));
      expect(err.exitCode).toBe(ExitCode.badInput);
      expect(err.message).toMatch(/^record on line 2: /);
    }
  });

  it('JSON that is not an object', async () => {
    for (const [text, msg] of [
      ['{"a": 1}\n[1, 2]\n', 'record on line 2: not a JSON object'],
      ['{"a": 1}\nnull\n', 'record on line 2: not a JSON object'],
      ['{"a": 1}\n"text"\n', 'record on line 2: not a JSON object'],
      ['{"a": 1}\n42\n', 'record on line 2: not a JSON object'],
    ] as const) {
      const err = await failure(chunked(lines(fullRecord()) + text.split('\n')[1] + '\n'));
      expect(err.message).toBe(msg.replace('line 2', 'line 2'));
    }
  });

  it('another kind of JSON object', async () => {
    const err = await failure(chunked('{"sbk": "manifest"}\n'));
    expect(err.message).toBe('record on line 1: not an sbk backup record (field "sbk" is "manifest")');
    const noSbk = await failure(chunked('{"hello": "world"}\n'));
    expect(noSbk.message).toBe('record on line 1: not an sbk backup record (field "sbk" is undefined)');
  });

  it('a record of another format version', async () => {
    const err = await failure(chunked(lines({ ...fullRecord(), format: 2 })));
    expect(err.message).toBe(`record on line 1: record format 2 is not supported (this sbk reads ${RECORD_FORMAT})`);
  });

  type Mutation = [string, (r: Record<string, any>) => void, string];
  const mutations: Mutation[] = [
    ['no container', (r) => delete r.container, 'container name missing or invalid'],
    ['a container with /', (r) => (r.container = '../etc'), 'container name missing or invalid'],
    ['no time', (r) => delete r.time, 'time is not a unix time'],
    ['a negative time', (r) => (r.time = -1), 'time is not a unix time'],
    ['a fractional time', (r) => (r.time = 1.5), 'time is not a unix time'],
    ['a string time', (r) => (r.time = '1477297700'), 'time is not a unix time'],
    ['no full', (r) => delete r.full, 'full is not true/false'],
    ['no name', (r) => delete r.name, 'name is missing'],
    ['no set', (r) => delete r.set, 'set is not an absolute path'],
    ['a relative set', (r) => (r.set = 'backups/c1/1'), 'set is not an absolute path'],
    ['a set with NUL', (r) => (r.set = '/a\0b'), 'set is not an absolute path'],
    ['no containerDir', (r) => delete r.containerDir, 'containerDir is not an absolute path'],
    ['an incremental without parent', (r) => ((r.full = false), (r.parent = null)), 'an incremental record needs a parent'],
    ['a parent that is not an object', (r) => (r.parent = 'c1_1'), 'parent is not an object'],
    ['a parent without time', (r) => (r.parent = { full: true, name: 'c1_1_Full', set: '/b/c1/1_Full' }), 'parent.time is not a unix time'],
    ['a parent without full', (r) => (r.parent = { time: 1, name: 'c1_1_Full', set: '/b/c1/1_Full' }), 'parent.full is not true/false'],
    ['a parent without name', (r) => (r.parent = { time: 1, full: true, set: '/b/c1/1_Full' }), 'parent.name is missing'],
    ['a parent without set', (r) => (r.parent = { time: 1, full: true, name: 'c1_1_Full' }), 'parent.set is not an absolute path'],
    ['a previous without set', (r) => (r.previous = { time: 1, full: true, name: 'c1_1_Full' }), 'previous.set is not an absolute path'],
    ['no volumes', (r) => delete r.volumes, 'volumes missing or empty'],
    ['empty volumes', (r) => (r.volumes = []), 'volumes missing or empty'],
    ['volumes not an array', (r) => (r.volumes = { rootfs: {} }), 'volumes missing or empty'],
    ['a volume that is not an object', (r) => (r.volumes[1] = 'home'), 'volumes[1] is not an object'],
    ['a volume without name', (r) => delete r.volumes[2].name, 'volumes[2].name is invalid'],
    ['a volume named ../x', (r) => (r.volumes[0].name = '../x'), 'volumes[0].name is invalid'],
    ['a volume named meta', (r) => (r.volumes[0].name = 'meta'), 'volumes[0].name is invalid'],
    ['a volume without mount', (r) => delete r.volumes[1].mount, 'volumes[1].mount is invalid'],
    ['a relative mount', (r) => (r.volumes[1].mount = 'home'), 'volumes[1].mount is invalid'],
    ['a volume without snapshot', (r) => delete r.volumes[3].snapshot, 'volumes[3].snapshot is not an absolute path'],
    ['a volume without source', (r) => delete r.volumes[3].source, 'volumes[3].source is not an absolute path'],
    ['a volume without uuid', (r) => delete r.volumes[0].uuid, 'volumes[0].uuid is missing'],
    ['a volume with a numeric parentUuid', (r) => (r.volumes[0].parentUuid = 7), 'volumes[0].parentUuid is invalid'],
    ['a relative changelog', (r) => (r.changelog = 'changelog.txt'), 'changelog is not an absolute path'],
    ['an unknown consistency', (r) => (r.consistency = 'paused'), 'consistency is not one of frozen, stopped, live'],
    ['a consistency that is not a string', (r) => (r.consistency = true), 'consistency is not one of frozen, stopped, live'],
    ['a negative frozenMs', (r) => ((r.consistency = 'frozen'), (r.frozenMs = -1)), 'frozenMs is not a whole number of ms'],
    ['a fractional frozenMs', (r) => ((r.consistency = 'frozen'), (r.frozenMs = 1.5)), 'frozenMs is not a whole number of ms'],
    ['a string frozenMs', (r) => ((r.consistency = 'frozen'), (r.frozenMs = '12')), 'frozenMs is not a whole number of ms'],
    ['frozenMs of a set not frozen', (r) => ((r.consistency = 'live'), (r.frozenMs = 12)), 'frozenMs without consistency "frozen"'],
  ];
  it.each(mutations)('%s', async (_what, mutate, message) => {
    const r = JSON.parse(JSON.stringify(fullRecord())) as Record<string, any>;
    mutate(r);
    const err = await failure(chunked(lines(fullRecord(), '', r)));
    expect(err.exitCode).toBe(ExitCode.badInput);
    expect(err.message).toBe(`record on line 3: ${message}`);
  });

  it('checkRecord accepts what formatRecord writes', () => {
    expect(checkRecord(JSON.parse(formatRecord(incrementalRecord())), 1)).toEqual(incrementalRecord());
  });

  it('how the set was taken (consistency, frozenMs) is read when present, and records without it stay valid', async () => {
    const taken: BackupRecord[] = [
      { ...fullRecord(1477297700), consistency: 'frozen', frozenMs: 42 },
      { ...fullRecord(1477297701), consistency: 'frozen' },
      { ...fullRecord(1477297702), consistency: 'stopped' },
      { ...fullRecord(1477297703), consistency: 'live' },
      fullRecord(1477297704),
    ];
    expect(await readAll(chunked(lines(...taken)))).toEqual(taken);
    expect(formatRecord(taken[0]!)).toMatch(/"consistency":"frozen","frozenMs":42\}\n$/);
  });

  it('a line longer than 16 MiB is refused as bad input, naming the line', async () => {
    const huge = '{"sbk": "backup", "pad": "' + 'x'.repeat(17 * 1024 * 1024);
    const err = await failure(chunked(lines(fullRecord()) + huge, 1024 * 1024));
    expect(err.exitCode).toBe(ExitCode.badInput);
    expect(err.message).toMatch(/^record on line 2: longer than 16777216 bytes/);
  });
});

describe('readRecords: other kinds of input are refused up front', () => {
  async function tarBytes(): Promise<Buffer> {
    const pack = tar.pack();
    pack.entry({ name: 'manifest.json' }, '{"sbk":"manifest"}');
    pack.finalize();
    const chunks: Buffer[] = [];
    for await (const c of pack) chunks.push(c as Buffer);
    return Buffer.concat(chunks);
  }

  it('tar bytes (sbk-send output)', async () => {
    const err = await failure(chunked(await tarBytes()));
    expect(err.exitCode).toBe(ExitCode.badInput);
    expect(err.message).toBe('expected NDJSON backup records (sbk-snap output) on stdin, got a tar stream (sbk-send output?)');
  });

  it('gzip bytes (an archive), even of NDJSON', async () => {
    const err = await failure(chunked(gzipSync(formatRecord(fullRecord()))));
    expect(err.exitCode).toBe(ExitCode.badInput);
    expect(err.message).toMatch(/got gzip-compressed data/);
  });

  it('a raw btrfs send stream', async () => {
    const err = await failure(chunked(Buffer.concat([Buffer.from('btrfs-stream\0'), Buffer.from([1, 0, 0, 0]), Buffer.alloc(100)])));
    expect(err.exitCode).toBe(ExitCode.badInput);
    expect(err.message).toMatch(/got a raw btrfs send stream$/);
  });

  it('binary data', async () => {
    const bin = Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 256));
    const err = await failure(chunked(bin));
    expect(err.exitCode).toBe(ExitCode.badInput);
    expect(err.message).toMatch(/got binary data$/);
  });

  it('plain text, a JSON array, a shell error message', async () => {
    for (const text of ['hello world\n', '[{"sbk":"backup"}]\n', 'sbk-snap: no such container c9\n']) {
      const err = await failure(chunked(text));
      expect(err.exitCode).toBe(ExitCode.badInput);
      expect(err.message).toMatch(/got text$/);
    }
  });

  it('binary data that starts like JSON is a malformed line 1', async () => {
    const err = await failure(chunked(Buffer.concat([Buffer.from('{"sbk"'), Buffer.from([0, 0xff, 0xfe, 0]), Buffer.from('\n')])));
    expect(err.exitCode).toBe(ExitCode.badInput);
    expect(err.message).toMatch(/^record on line 1: malformed JSON/);
  });
});

describe('readRecords: a failing input', () => {
  it('passes the error on instead of waiting forever', async () => {
    const boom = Object.assign(new Error('read error'), { code: 'EIO' });
    const input = new Readable({ read() {} });
    input.push(formatRecord(fullRecord()));
    input.push(JSON.stringify(incrementalRecord()).slice(0, 100));
    setTimeout(() => input.destroy(boom), 20);
    const got: BackupRecord[] = [];
    const err = await (async () => {
      for await (const r of readRecords(input)) got.push(r);
    })().catch((e: unknown) => e);
    expect(got).toEqual([fullRecord()]);
    expect(err).toBe(boom);
  });

  it('an error before the first byte', async () => {
    const boom = new Error('gone');
    const input = new Readable({ read() {} });
    setTimeout(() => input.destroy(boom), 5);
    await expect(readAll(input)).rejects.toBe(boom);
  });
});
