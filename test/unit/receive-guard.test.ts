// ReceiveGuard: what `btrfs receive` may be told to touch. Real streams (the fixtures, a Full
// then its incremental through one guard, as a restore receives a chain) pass untouched; crafted
// commands that would reach outside the subvolume are refused as corrupt, naming the command.
import { readFileSync } from 'node:fs';
import { describe, it, expect } from 'vitest';
import { ReceiveGuard } from '../../src/formats/sendstream/guard.js';
import { SendStreamReader } from '../../src/formats/sendstream/reader.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';
import { cmd, stream } from '../helpers/sendstream-builder.js';

const FIX = new URL('../fixtures/sendstream/', import.meta.url);
const fixture = (name: string) => readFileSync(new URL(name, FIX));

/** Reads a stream through a guard (64 KiB at a time, as receive is fed); returns the command count. */
function guarded(buf: Buffer, guard = new ReceiveGuard()): number {
  const r = new SendStreamReader((c) => guard.check(c), { decode: 'all' });
  for (let o = 0; o < buf.length; o += 65536) r.write(buf.subarray(o, o + 65536));
  return r.end().commands;
}

function refused(buf: Buffer, guard?: ReceiveGuard): SbkError {
  try {
    guarded(buf, guard);
  } catch (err) {
    expect(err).toBeInstanceOf(SbkError);
    expect((err as SbkError).exitCode).toBe(ExitCode.corrupt);
    return err as SbkError;
  }
  throw new Error('the stream was not refused');
}

const U1 = Buffer.alloc(16, 1);
const U2 = Buffer.alloc(16, 2);

describe('ReceiveGuard on real streams', () => {
  it.each([
    ['v1-full.stream', 'v1-incr.stream'],
    ['v1-full-nodata.stream', 'v1-incr-nodata.stream'],
    ['v2-full.stream', 'v2-incr-nodata.stream'],
    ['v2-full-compressed.stream', 'v2-incr-nodata.stream'],
  ])('%s then %s pass through one guard', (full, incr) => {
    const guard = new ReceiveGuard();
    expect(guarded(fixture(full), guard)).toBeGreaterThan(10);
    expect(guarded(fixture(incr), guard)).toBeGreaterThan(5);
  });
});

describe('ReceiveGuard refuses what btrfs send never makes', () => {
  it.each([
    ['an absolute path', stream(cmd.subvol('rootfs'), cmd.mkdir('/tmp/x')), /path '\/tmp\/x' is absolute/],
    ['a .. path', stream(cmd.subvol('rootfs'), cmd.mkdir('a/../../x')), /leaves the subvolume/],
    ['a .. rename target', stream(cmd.subvol('rootfs'), cmd.mkdir('a'), cmd.rename('a', '../a')), /new path '..\/a' leaves/],
    ['a .. link source', stream(cmd.subvol('rootfs'), cmd.link('x', '../../etc/shadow')), /link source/],
    ['a subvolume name with a slash', stream(cmd.subvol('a/b')), /not a plain name/],
    ['a subvolume named ..', stream(cmd.subvol('..')), /not a plain name/],
    ['a path through a symlink it made', stream(cmd.subvol('rootfs'), cmd.symlink('l', '/etc'), cmd.mkfile('l/passwd')), /through the symlink 'l'/],
    ['a write to a symlink', stream(cmd.subvol('rootfs'), cmd.symlink('l', '/etc/passwd'), cmd.write('l', Buffer.from('x'))), /'l' is a symlink/],
    ['a chmod of a symlink', stream(cmd.subvol('rootfs'), cmd.symlink('l', '/etc/shadow'), cmd.chmod('l', 0o777)), /'l' is a symlink/],
    [
      'a path through a symlink moved with its directory',
      stream(cmd.subvol('rootfs'), cmd.mkdir('d'), cmd.symlink('d/l', '/'), cmd.rename('d', 'e'), cmd.mkdir('e/l/x')),
      /through the symlink 'e\/l'/,
    ],
    ['a path through a hard link to a symlink', stream(cmd.subvol('rootfs'), cmd.symlink('l', '/'), cmd.link('m', 'l'), cmd.mkdir('m/x')), /symlink 'm'/],
    ['a link source through a symlink', stream(cmd.subvol('rootfs'), cmd.symlink('l', '/etc'), cmd.link('x', 'l/shadow')), /link source 'l\/shadow'/],
  ])('%s', (_what, buf, message) => {
    expect(refused(buf).message).toMatch(message);
  });

  it('an incremental through a symlink its parent has (the guard follows the chain)', () => {
    const guard = new ReceiveGuard();
    guarded(stream(cmd.subvol('rootfs', U1), cmd.symlink('etc-link', '/etc')), guard);
    expect(refused(stream(cmd.snapshot('rootfs', U2, U1), cmd.mkfile('etc-link/cron.d/x')), guard).message).toMatch(/symlink 'etc-link'/);
  });

  it('keeps what a legit stream does with symlinks: lchown them, replace them, rename them, reuse the name', () => {
    const guard = new ReceiveGuard();
    const n = guarded(
      stream(
        cmd.subvol('rootfs'),
        cmd.symlink('o300-1-0', '/usr/lib'),
        cmd.rename('o300-1-0', 'lib'), // a new inode gets its temporary name first
        cmd.chown('lib'), // lchown: does not follow
        cmd.mkdir('usr'),
        cmd.unlink('lib'),
        cmd.mkdir('lib'), // the name is a directory now
        cmd.mkfile('lib/libc.so'),
        cmd.write('lib/libc.so', Buffer.from('elf')),
        cmd.symlink('tmp', 'usr'),
        cmd.mkfile('x'),
        cmd.rename('x', 'tmp'), // a file renamed over the symlink
        cmd.write('tmp', Buffer.from('data')),
      ),
      guard,
    );
    expect(n).toBe(14); // END included
  });

  it('a Full (SUBVOL) starts afresh: a symlink of an earlier chain is forgotten', () => {
    const guard = new ReceiveGuard();
    guarded(stream(cmd.subvol('rootfs', U1), cmd.symlink('d', '/')), guard);
    expect(guarded(stream(cmd.subvol('rootfs', U2), cmd.mkdir('d'), cmd.mkfile('d/x')), guard)).toBe(4);
  });
});
