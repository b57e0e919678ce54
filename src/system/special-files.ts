// Device nodes, fifos and sockets for the user-space replay of send streams. Node cannot make
// them, so each is made by a small child process (mknod(1) of coreutils; a socket by perl's
// bind, perl-base being part of every Debian system) at a plain ASCII path the caller then renames
// into place. They are few in any tree, so a process each costs little.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { SbkError, ExitCode } from '../core/errors.js';

export type SpecialKind = 'chr' | 'blk' | 'fifo' | 'sock';

/** Thrown when only a privileged user may make the node (a device node as non-root). */
export class NotPermitted extends Error {}

const major = (rdev: number) => Number((BigInt(rdev) >> 8n) & 0xfffn) | Number((BigInt(rdev) >> 32n) & ~0xfffn);
const minor = (rdev: number) => Number(BigInt(rdev) & 0xffn) | Number((BigInt(rdev) >> 12n) & ~0xffn);

/** Makes a node of `kind` at `at` (mode bits: permissions only; the caller sets them later too). */
export function makeSpecialFile(at: string, kind: SpecialKind, perm: number, rdev = 0): void {
  const mode = (perm & 0o7777).toString(8);
  const r =
    kind === 'sock'
      ? spawnSync('perl', ['-MSocket', '-e', 'socket(my $s, AF_UNIX, SOCK_STREAM, 0) or die "$!\\n"; bind($s, pack_sockaddr_un($ARGV[0])) or die "$!\\n"', path.basename(at)], {
          cwd: path.dirname(at),
          stdio: ['ignore', 'ignore', 'pipe'],
        })
      : spawnSync('mknod', ['-m', mode, '--', at, kind === 'chr' ? 'c' : kind === 'blk' ? 'b' : 'p', ...(kind === 'fifo' ? [] : [String(major(rdev)), String(minor(rdev))])], {
          stdio: ['ignore', 'ignore', 'pipe'],
        });
  if (r.error || r.status !== 0) {
    const why = String(r.stderr ?? '').trim() || r.error?.message || `exit ${r.status}`;
    if (/not permitted/i.test(why)) throw new NotPermitted(why);
    throw new SbkError(`making a ${kind} node: ${why}`, ExitCode.failure);
  }
}
