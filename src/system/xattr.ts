// Extended attributes for the user-space replay of send streams. Node has no xattr calls, so
// they are set in batches by one `setfattr --restore` (the attr package) per batch: each file is
// held open as an O_PATH descriptor (no open side effects, symlinks and device nodes included)
// and named to setfattr as /proc/<pid>/fd/<n>, so a file renamed or unlinked before the batch is
// flushed still gets its attributes. A stream without xattrs never starts a process.
import { closeSync, constants, fstatSync, openSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { SbkError, ExitCode } from '../core/errors.js';

/** open(2) flag O_PATH (Linux): a descriptor that only names the file. Node has no constant. */
const O_PATH = 0o10000000;
/** Files held open per batch: well under the default limit of 1024 descriptors. */
const MAX_BATCH = 256;

/** getfattr's quoting (which setfattr --restore undoes): octal escapes for control bytes, bytes
 *  above 126, '=' and '\'. `s` holds one byte per char (latin1). */
function quote(s: string): string {
  let out = '';
  for (let i = 0; i < s.length; i++) {
    const b = s.charCodeAt(i);
    out += b < 33 || b > 126 || b === 0x3d || b === 0x5c ? '\\' + b.toString(8).padStart(3, '0') : s[i];
  }
  return out;
}

interface Pending {
  fd: number;
  /** Where the file was when the attribute was set, for messages. */
  shown: string;
  lines: string[];
}

/** Sets and removes extended attributes of files, in batches (see the module comment). */
export class XattrWriter {
  private pending = new Map<number, Pending>();
  private count = 0;

  /** Whether a set is waiting for the next flush. */
  get busy(): boolean {
    return this.pending.size > 0;
  }

  /** Queues `name` = `value` on the file at `file` (not following a last symlink). */
  set(file: Buffer, shown: string, name: string, value: Buffer): void {
    if (name.includes('\0') || name === '') throw new SbkError(`${shown}: invalid xattr name`, ExitCode.corrupt);
    const fd = openSync(file, O_PATH | constants.O_NOFOLLOW);
    const ino = fstatSync(fd).ino;
    let p = this.pending.get(ino);
    if (p) closeSync(fd);
    else this.pending.set(ino, (p = { fd, shown, lines: [] }));
    p.lines.push(`${quote(name)}=${value.length ? '0x' + value.toString('hex') : '""'}`);
    if (++this.count >= MAX_BATCH) this.flush();
  }

  /** Removes `name` from the file at `file` (the queued sets go first). */
  remove(file: Buffer, shown: string, name: string): void {
    this.flush();
    if (!/^[\x21-\x7e]+$/.test(name))
      throw new SbkError(`${shown}: cannot remove the xattr '${quote(name)}' (only printable ASCII names can be removed)`, ExitCode.failure);
    const fd = openSync(file, O_PATH | constants.O_NOFOLLOW);
    try {
      const r = spawnSync('setfattr', ['-x', name, `/proc/${process.pid}/fd/${fd}`], { stdio: ['ignore', 'ignore', 'pipe'] });
      if (r.error || r.status !== 0) throw failure(`removing the xattr ${name} of ${shown}`, r);
    } finally {
      closeSync(fd);
    }
  }

  /** Applies the queued sets, in the order they were queued per file. */
  flush(): void {
    if (this.pending.size === 0) return;
    const batch = [...this.pending.values()];
    this.pending = new Map();
    this.count = 0;
    try {
      const dump = batch.map((p) => `# file: /proc/${process.pid}/fd/${p.fd}\n${p.lines.join('\n')}\n`).join('\n');
      const r = spawnSync('setfattr', ['--restore=-'], { input: Buffer.from(dump + '\n', 'latin1'), stdio: ['pipe', 'ignore', 'pipe'] });
      if (r.error || r.status !== 0) throw failure(`setting the xattrs of ${batch.map((p) => p.shown).join(', ')}`, r);
    } finally {
      for (const p of batch) closeSync(p.fd);
    }
  }

  /** Drops what is queued (after a failure). */
  discard(): void {
    for (const p of this.pending.values()) closeSync(p.fd);
    this.pending = new Map();
    this.count = 0;
  }
}

function failure(what: string, r: ReturnType<typeof spawnSync>): SbkError {
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT')
    return new SbkError(`${what}: setfattr is not installed (apt-get install attr)`, ExitCode.failure);
  const why = String(r.stderr ?? '').trim().split('\n')[0] || r.error?.message || `exit ${r.status}`;
  return new SbkError(`${what}: ${why}`, ExitCode.failure);
}
