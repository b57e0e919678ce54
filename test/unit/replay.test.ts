// The user-space replay of send streams (src/stages/unpack/replay/volume.ts) on crafted streams:
// hostile commands are refused before anything is written outside the volume's directory, a
// clone from the parent reads the parent's data as it was before the stream overwrote,
// truncated, renamed or removed it, and a stream that does not fit the tree is a clear error.
import { existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, readlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, it, expect } from 'vitest';
import { SendStreamReader } from '../../src/formats/sendstream/reader.js';
import { VolumeReplay } from '../../src/stages/unpack/replay/volume.js';
import { XattrWriter } from '../../src/system/xattr.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';
import { cmd, stream } from '../helpers/sendstream-builder.js';
import { tempDirEach } from '../helpers/tempdir.js';

const FULL = Buffer.alloc(16, 1);
const INCR = Buffer.alloc(16, 2);
const INCR2 = Buffer.alloc(16, 3);

let tmp = '';
tempDirEach('sbk-replay-', (d) => (tmp = d));

/** A volume directory `vol` in tmp, with a scratch dir beside it, and a replay of it. */
function volume(): { dir: string; replay: VolumeReplay } {
  const dir = path.join(tmp, 'vol');
  mkdirSync(dir);
  mkdirSync(path.join(tmp, 'scratch'));
  return { dir, replay: new VolumeReplay({ volume: 'rootfs', dir, scratch: path.join(tmp, 'scratch'), xattrs: new XattrWriter() }) };
}

/** Applies one stream, fed in small chunks as an archive delivers it. */
function apply(replay: VolumeReplay, buf: Buffer): void {
  const r = new SendStreamReader((c) => replay.apply(c), { decode: 'all', wantData: true });
  try {
    for (let o = 0; o < buf.length; o += 7) r.write(buf.subarray(o, o + 7));
    r.end();
  } finally {
    replay.finish();
  }
}

function refused(replay: VolumeReplay, buf: Buffer): SbkError {
  try {
    apply(replay, buf);
  } catch (err) {
    expect(err).toBeInstanceOf(SbkError);
    return err as SbkError;
  }
  throw new Error('the stream was applied');
}

const data = (s: string) => Buffer.from(s);
const base = (...more: Buffer[]) => stream(cmd.subvol('rootfs', FULL), cmd.mkfile('a'), cmd.write('a', data('OLD-DATA-OLD-DATA')), ...more);
const incr = (...c: Buffer[]) => stream(cmd.snapshot('rootfs', INCR, FULL), ...c);

describe('replay refuses hostile streams before writing outside', () => {
  it.each([
    ['an absolute path', [cmd.mkdir(`${'/tmp'}/sbk-replay-hostile-abs`)]],
    ['a .. path', [cmd.mkdir('x'), cmd.mkfile('x/../../outside')]],
    ['a .. rename target', [cmd.mkfile('f'), cmd.rename('f', '../outside')]],
    ['a .. link', [cmd.link('l', '../outside')]],
    ['a path through a symlink it made', [cmd.symlink('l', '..'), cmd.mkfile('l/outside')]],
    ['a write through a symlink it made', [cmd.symlink('l', '../outside'), cmd.write('l', data('x'))]],
  ])('%s', (_what, cmds) => {
    const { replay } = volume();
    const err = refused(replay, stream(cmd.subvol('rootfs', FULL), ...cmds));
    expect(err.exitCode).toBe(ExitCode.corrupt);
    expect(err.message).toMatch(/refused/);
    expect(readdirSync(tmp).sort()).toEqual(['scratch', 'vol']);
    expect(existsSync('/tmp/sbk-replay-hostile-abs')).toBe(false);
  });

  it('a path through a symlink the parent stream made', () => {
    const { replay } = volume();
    apply(replay, stream(cmd.subvol('rootfs', FULL), cmd.symlink('l', '..')));
    const err = refused(replay, incr(cmd.mkfile('l/outside')));
    expect(err.message).toMatch(/through the symlink 'l'/);
    expect(readdirSync(tmp).sort()).toEqual(['scratch', 'vol']);
  });

  it('a clone from the parent through a symlink of the parent is refused', () => {
    const { replay } = volume();
    writeFileSync(path.join(tmp, 'secret'), 'host data');
    apply(replay, stream(cmd.subvol('rootfs', FULL), cmd.symlink('l', '..')));
    const err = refused(replay, incr(cmd.mkfile('b'), cmd.clone('b', 0, 9, FULL, 'l/secret', 0)));
    expect(err.message).toMatch(/symlink/);
  });
});

describe('a clone from the parent reads the parent as it was', () => {
  const cases: [string, Buffer[]][] = [
    ['overwritten', [cmd.writeAt('a', 4, data('NEW!'))]],
    ['truncated', [cmd.truncate('a', 2)]],
    ['removed', [cmd.unlink('a')]],
    ['renamed, then overwritten', [cmd.rename('a', 'c'), cmd.writeAt('c', 0, data('XXXXXXXXXXXXXXXXX'))]],
    ['replaced by a new file of its name', [cmd.rename('a', 'o1-1-0'), cmd.mkfile('a'), cmd.write('a', data('other')), cmd.unlink('o1-1-0')]],
  ];
  it.each(cases)('%s', (_what, change) => {
    const { dir, replay } = volume();
    apply(replay, base());
    apply(replay, incr(...change, cmd.mkfile('b'), cmd.clone('b', 0, 17, FULL, 'a', 0)));
    expect(readFileSync(path.join(dir, 'b'), 'utf8')).toBe('OLD-DATA-OLD-DATA');
    expect(readdirSync(path.join(tmp, 'scratch'))).toEqual([]); // the shadow went at END
  });

  it('through a directory moved away, in part overwritten before', () => {
    const { dir, replay } = volume();
    apply(replay, stream(cmd.subvol('rootfs', FULL), cmd.mkdir('d'), cmd.mkfile('d/a'), cmd.write('d/a', data('0123456789'))));
    apply(replay, incr(cmd.writeAt('d/a', 2, data('xx')), cmd.rename('d', 'e'), cmd.writeAt('e/a', 6, data('yy')), cmd.mkfile('b'), cmd.clone('b', 0, 10, FULL, 'd/a', 0)));
    expect(readFileSync(path.join(dir, 'b'), 'utf8')).toBe('0123456789');
    expect(readFileSync(path.join(dir, 'e/a'), 'utf8')).toBe('01xx45yy89');
  });

  it('a clone from this subvolume reads what the stream wrote', () => {
    const { dir, replay } = volume();
    apply(replay, base());
    apply(replay, incr(cmd.writeAt('a', 0, data('NEW')), cmd.mkfile('b'), cmd.clone('b', 0, 5, INCR, 'a', 0)));
    expect(readFileSync(path.join(dir, 'b'), 'utf8')).toBe('NEW-D');
  });

  it('holes stay holes; TRUNCATE sets the size', () => {
    const { dir, replay } = volume();
    apply(replay, stream(cmd.subvol('rootfs', FULL), cmd.mkfile('s'), cmd.writeAt('s', 8 << 20, data('x')), cmd.truncate('s', 16 << 20)));
    const st = lstatSync(path.join(dir, 's'));
    expect(st.size).toBe(16 << 20);
    expect(st.blocks * 512).toBeLessThanOrEqual(64 * 1024);
  });
});

describe('a stream that does not fit is a clear error', () => {
  it('an incremental of another parent', () => {
    const { replay } = volume();
    apply(replay, base());
    const err = refused(replay, stream(cmd.snapshot('rootfs', INCR2, INCR)));
    expect(err.exitCode).toBe(ExitCode.corrupt);
    expect(err.message).toMatch(/parent/);
  });

  it('a rename of a path that is not there', () => {
    const { replay } = volume();
    apply(replay, base());
    const err = refused(replay, incr(cmd.rename('nope', 'x')));
    expect(err.exitCode).toBe(ExitCode.corrupt);
    expect(err.message).toMatch(/rename nope -> x: .*does not apply/);
  });

  it('a clone from a subvolume that is neither this one nor its parent', () => {
    const { replay } = volume();
    apply(replay, base());
    const err = refused(replay, incr(cmd.mkfile('b'), cmd.clone('b', 0, 3, INCR2, 'a', 0)));
    expect(err.message).toMatch(/neither this one nor its parent/);
  });

});

describe('names and targets are bytes', () => {
  it('symlinks keep their target bytes', () => {
    const { dir, replay } = volume();
    apply(replay, stream(cmd.subvol('rootfs', FULL), cmd.symlink('l', 'caf\xe9/\nx')));
    expect(readlinkSync(path.join(dir, 'l'), { encoding: 'buffer' })).toEqual(Buffer.from('caf\xe9/\nx', 'latin1'));
  });
});
