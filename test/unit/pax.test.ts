// The pax header bytes sbk-unpack --tar writes (formats/pax.ts): records round-trip whatever
// their value's bytes, their length counts its own digits; ustar headers carry what fits and
// hand the rest to records; sparse maps and ACL text as GNU tar writes them. And the --path
// selection's canonical form (stages/unpack/selection.ts) selects what the paths given select.
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { aclText, decodePaxRecords, encodePaxRecord, sparseMap, ustarHeader, TarType } from '../../src/formats/pax.js';
import { covers, normalizeSelection } from '../../src/stages/unpack/selection.js';

const key = fc.string({ minLength: 1, maxLength: 40 }).filter((k) => !/[=\n\0]/.test(k));

describe('pax records', () => {
  it('round-trip any key and any value bytes, one after another', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(key, fc.uint8Array({ maxLength: 2000 })), { maxLength: 8 }), (recs) => {
        const bytes = Buffer.concat(recs.map(([k, v]) => encodePaxRecord(k, Buffer.from(v))));
        const back = decodePaxRecords(bytes);
        expect(back.map(([k, v]) => [k, [...(v as Buffer)]])).toEqual(recs.map(([k, v]) => [k, [...v]]));
      }),
      { numRuns: 300 },
    );
  });

  it('say their own length, digits included, at every digit boundary', () => {
    for (let n = 0; n < 1100; n++) {
      const r = encodePaxRecord('k', Buffer.alloc(n, 0x61));
      expect(Number(r.toString('latin1').split(' ')[0])).toBe(r.length);
    }
  });
});

describe('ustar headers', () => {
  it('put long or non-ASCII names and large ids in records, with a valid checksum', () => {
    const name = Buffer.concat([Buffer.from('./'), Buffer.alloc(150, 0x61), Buffer.from([0xff])]);
    const { block, records } = ustarHeader({ name, type: TarType.file, mode: 0o4755, uid: 3_000_000, gid: 7, size: 9n * 1024n ** 3n, mtime: 1n });
    expect(records.map(([k]) => k)).toEqual(['path', 'uid', 'size']);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : block[i]!;
    expect(parseInt(block.subarray(148, 154).toString('latin1'), 8)).toBe(sum);
    expect(block.subarray(100, 107).toString('latin1')).toBe('0004755');
  });
});

describe('GNU sparse 1.0 maps', () => {
  it('list the regions, and an empty one at the size when the file ends in a hole', () => {
    expect(sparseMap([[4096n, 10n]], 8192n).toString('latin1').replace(/\0+$/, '')).toBe('2\n4096\n10\n8192\n0\n');
    expect(sparseMap([[0n, 8192n]], 8192n).toString('latin1').replace(/\0+$/, '')).toBe('1\n0\n8192\n');
    expect(sparseMap([], 8192n).length).toBe(512);
  });
});

describe('ACL text', () => {
  it('is the text form of the kernel ACL bytes, ids numeric', () => {
    const e = (tag: number, perm: number, id = 0xffffffff) => {
      const b = Buffer.alloc(8);
      b.writeUInt16LE(tag, 0);
      b.writeUInt16LE(perm, 2);
      b.writeUInt32LE(id, 4);
      return b;
    };
    const acl = Buffer.concat([Buffer.from([2, 0, 0, 0]), e(1, 6), e(2, 4, 1234), e(4, 4), e(8, 6, 2345), e(0x10, 6), e(0x20, 4)]);
    expect(aclText(acl)).toBe('user::rw-,user:1234:r--,group::r--,group:2345:rw-,mask::rw-,other::r--');
    expect(aclText(Buffer.from('not an acl'))).toBeUndefined();
  });
});

describe('--path selection', () => {
  const segment = fc.constantFrom('etc', 'nginx', 'home', 'a', 'b', '.', '..', '');
  const containerPath = fc.array(segment, { minLength: 0, maxLength: 5 }).map((s) => '/' + s.join('/'));

  it('selects exactly what the paths given select, each once, none under another', () => {
    fc.assert(
      fc.property(fc.array(containerPath, { minLength: 1, maxLength: 6 }), fc.array(containerPath, { maxLength: 20 }), (given, probes) => {
        const sel = normalizeSelection(given)!;
        for (const [i, p] of sel.entries()) for (const [j, q] of sel.entries()) if (i !== j) expect(covers(q, p)).toBe(false);
        const canon = (p: string) => normalizeSelection([p])![0]!;
        for (const probe of [...probes, ...given].map(canon))
          expect(sel.some((q) => covers(q, probe))).toBe(given.map(canon).some((q) => covers(q, probe)));
      }),
      { numRuns: 300 },
    );
  });

  it('reads a path without its leading or trailing slash, and refuses an empty one', () => {
    expect(normalizeSelection(['etc/nginx/', '/etc//nginx/../nginx'])).toEqual(['/etc/nginx']);
    expect(normalizeSelection(undefined)).toBeUndefined();
    expect(() => normalizeSelection([''])).toThrow(/not a path/);
  });
});
