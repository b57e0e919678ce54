// Receipts on synthetic archives (no BTRFS, no root): what a receipt holds and how it is
// checked and read. sbk-pack --store DIR, which writes them, is run in test/e2e/pack-store.test.ts.
import { describe, it, expect } from 'vitest';
import { Readable } from 'node:stream';
import zlib from 'node:zlib';
import { checkReceipt, readReceipts, formatReceipt, type Receipt } from '../../src/formats/receipt.js';
import { SbkError } from '../../src/core/errors.js';

describe('receipts', () => {
  const good: Receipt = {
    sbk: 'receipt',
    format: 1,
    name: 'c1_1700000100',
    container: 'c1',
    time: 1_700_000_100,
    full: false,
    archive: 'c1_1700000100.tar.gz',
    size: 10,
    sha256: 'a'.repeat(64),
    host: 'h',
    path: '/srv/b/c1_1700000100.tar.gz',
    stored: '2026-01-01T00:00:00.000Z',
    volumes: [{ name: 'rootfs', uuid: 'u' }],
  };

  it('accepts a full receipt and a minimal one', () => {
    expect(checkReceipt(JSON.parse(formatReceipt(good)), 1)).toEqual(good);
    const min = { sbk: 'receipt', format: 1, name: 'c1_5_Full', container: 'c1', time: 5, full: true };
    expect(checkReceipt(min, 1)).toEqual(min);
  });

  it.each([
    [{ ...good, sbk: 'backup' }, /line 3: .*a backup record, not a receipt/],
    [{ ...good, format: 2 }, /line 3: receipt format 2 is not supported/],
    [{ ...good, name: 'c1_1700000100_Full' }, /line 3: name "c1_1700000100_Full" is not c1_1700000100/],
    [{ ...good, container: '../x' }, /line 3: container name/],
    [{ ...good, sha256: 'zz' }, /line 3: sha256/],
    [{ ...good, size: -1 }, /line 3: size/],
    [{ ...good, volumes: [{ name: '../x', uuid: 'u' }] }, /line 3: volumes\[0\]/],
    [[1, 2], /line 3: not a JSON object/],
  ])('refuses %j', (v, msg) => {
    expect(() => checkReceipt(v, 3)).toThrow(msg);
  });

  it('reads NDJSON line by line, naming the line of a malformed one', async () => {
    const text = formatReceipt(good) + '\n' + formatReceipt({ ...good, time: 1_700_000_200, name: 'c1_1700000200' }) + '{"sbk":"rec';
    const seen: number[] = [];
    let error: unknown;
    try {
      for await (const { receipt, line } of readReceipts(Readable.from([Buffer.from(text)]))) seen.push(receipt.time, line);
    } catch (err) {
      error = err;
    }
    expect(seen).toEqual([1_700_000_100, 1, 1_700_000_200, 3]);
    expect(error).toBeInstanceOf(SbkError);
    expect((error as SbkError).exitCode).toBe(3);
    expect((error as SbkError).message).toMatch(/^receipt on line 4: malformed JSON/);
  });

  it('refuses other kinds of input by their first bytes; empty input is no receipts', async () => {
    const read = async (b: Buffer) => {
      const out = [];
      for await (const r of readReceipts(Readable.from([b]))) out.push(r);
      return out;
    };
    await expect(read(zlib.gzipSync('x'))).rejects.toThrow(/expected NDJSON receipts .* got gzip/);
    expect(await read(Buffer.alloc(0))).toEqual([]);
    expect(await read(Buffer.from('\n\n'))).toEqual([]);
  });
});

