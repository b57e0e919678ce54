// The semantic check of sbk-unpack --verify (formats/sendstream/tree-model.ts): each incremental
// applies to the tree its parent leaves. Real streams of a Full and its incremental apply; a
// command on a path the parent's tree does not have (renamed, removed or never there) is refused
// naming it; a clone from the parent reads the parent's tree as it was before the stream; an
// incremental whose parent was not checked first is not judged.
import { describe, it, expect } from 'vitest';
import { readFileSync } from 'node:fs';
import { SendStreamReader } from '../../src/formats/sendstream/reader.js';
import { TreeModel } from '../../src/formats/sendstream/tree-model.js';
import { cmd, stream } from '../helpers/sendstream-builder.js';

const fixture = (n: string) => readFileSync(new URL(`../fixtures/sendstream/${n}.stream`, import.meta.url));

function apply(model: TreeModel, bytes: Buffer): void {
  const r = new SendStreamReader((c) => model.check(c), { decode: 'all' });
  r.write(bytes);
  r.end();
}

const FULL = Buffer.alloc(16, 1);
const INCR = Buffer.alloc(16, 2);
const full = stream(cmd.subvol('s1', FULL), cmd.mkdir('a'), cmd.mkfile('a/f'), cmd.write('a/f', Buffer.from('x')), cmd.mkdir('d'), cmd.mkfile('g'));
const incremental = (...c: Buffer[]) => stream(cmd.snapshot('s2', INCR, FULL), ...c);

describe('tree model of a chain', () => {
  it('applies real streams: a Full, then its incremental (v1 and v2)', () => {
    for (const [f, i] of [['v1-full', 'v1-incr'], ['v1-full-nodata', 'v1-incr-nodata'], ['v2-full', 'v2-incr-nodata']]) {
      const m = new TreeModel();
      apply(m, fixture(f!));
      expect(() => apply(m, fixture(i!)), i).not.toThrow();
    }
  });

  it('refuses an incremental that renames, writes, links or removes what the parent does not have', () => {
    const cases: [Buffer, RegExp][] = [
      [incremental(cmd.rename('a/missing', 'b')), /rename does not apply to the tree its parent leaves: 'a\/missing' does not exist/],
      [incremental(cmd.write('nowhere', Buffer.from('x'))), /write .*the path 'nowhere' does not exist/],
      [incremental(cmd.link('a/h', 'a/gone')), /link .*the link source 'a\/gone' does not exist/],
      [incremental(cmd.unlink('a/f'), cmd.chmod('a/f', 0o600)), /chmod .*'a\/f' does not exist/],
      [incremental(cmd.mkfile('g')), /mkfile .*'g' exists already/],
      [incremental(cmd.rmdir('a')), /rmdir .*the directory 'a' is not empty/],
      [incremental(cmd.mkfile('x/y')), /the directory of 'x\/y' does not exist/],
      [incremental(cmd.clone('g', 0, 4096, FULL, 'never', 0)), /clone .*the clone source 'never' does not exist in the parent/],
    ];
    for (const [bytes, re] of cases) {
      const m = new TreeModel();
      apply(m, full);
      expect(() => apply(m, bytes)).toThrow(re);
    }
  });

  it('reads a clone from the parent in the tree as the parent left it', () => {
    const m = new TreeModel();
    apply(m, full);
    // a/f renamed away and a/ removed by this stream: still there in the parent.
    expect(() => apply(m, incremental(cmd.rename('a/f', 'd/f2'), cmd.rmdir('a'), cmd.clone('g', 0, 4096, FULL, 'a/f', 0), cmd.clone('g', 0, 4096, INCR, 'd/f2', 0)))).not.toThrow();
    const m2 = new TreeModel();
    apply(m2, full);
    expect(() => apply(m2, incremental(cmd.mkfile('new'), cmd.clone('g', 0, 4096, FULL, 'new', 0)))).toThrow(/'new' does not exist in the parent/);
    expect(() => apply(m2, stream(cmd.snapshot('s3', Buffer.alloc(16, 3), INCR), cmd.write('new', Buffer.from('y'))))).not.toThrow();
  });

  it('does not judge an incremental whose parent was not applied before it', () => {
    const m = new TreeModel();
    expect(() => apply(m, incremental(cmd.rename('a/missing', 'b')))).not.toThrow();
    apply(m, full);
    expect(() => apply(m, stream(cmd.snapshot('s2', INCR, Buffer.alloc(16, 9)), cmd.rename('a/missing', 'b')))).not.toThrow();
  });
});
