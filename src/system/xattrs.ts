// The extended attributes of every file in a tree, read with one `getfattr -R` (Node has no
// xattr calls): user.*, security.* (file capabilities), system.posix_acl_* (ACLs), and trusted.*
// as root. Only files that have any are held in memory (their path and attributes).
import { spawn } from 'node:child_process';
import { SbkError, ExitCode } from '../core/errors.js';

/** Attribute name → value. */
export type Xattrs = Map<string, Buffer>;

/** getfattr writes names with `\ooo` escapes for newline, backslash and the like; back to bytes. */
function unescapeOctal(b: Buffer): Buffer {
  if (!b.includes(0x5c)) return b;
  const out: number[] = [];
  for (let i = 0; i < b.length; i++) {
    const m = b[i] === 0x5c && /^[0-7]{3}$/.test(b.subarray(i + 1, i + 4).toString('latin1'));
    if (m) {
      out.push(parseInt(b.subarray(i + 1, i + 4).toString('latin1'), 8));
      i += 3;
    } else out.push(b[i]!);
  }
  return Buffer.from(out);
}

/**
 * The xattrs of every file under `root` (symlinks' own, never followed), by the file's path as
 * bytes in a latin1 string. Fails when getfattr cannot read any of them.
 */
export function readTreeXattrs(root: string, signal?: AbortSignal): Promise<Map<string, Xattrs>> {
  return new Promise((resolve, reject) => {
    const found = new Map<string, Xattrs>();
    const child = spawn('getfattr', ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'base64', '--absolute-names', '--', root], {
      stdio: ['ignore', 'pipe', 'pipe'],
      signal,
    });
    let current: Xattrs | undefined;
    let rest = Buffer.alloc(0);
    const line = (l: Buffer) => {
      if (l.length === 0) return;
      if (l.subarray(0, 8).toString('latin1') === '# file: ') {
        current = new Map();
        found.set(unescapeOctal(l.subarray(8)).toString('latin1'), current);
        return;
      }
      const at = l.indexOf('=0s');
      const name = unescapeOctal(at < 0 ? l : l.subarray(0, at)).toString('utf8');
      current?.set(name, at < 0 ? Buffer.alloc(0) : Buffer.from(l.subarray(at + 3).toString('latin1'), 'base64'));
    };
    child.stdout.on('data', (c: Buffer) => {
      let buf = rest.length ? Buffer.concat([rest, c]) : c;
      for (let nl = buf.indexOf(0x0a); nl >= 0; nl = buf.indexOf(0x0a)) {
        line(buf.subarray(0, nl));
        buf = buf.subarray(nl + 1);
      }
      rest = Buffer.from(buf);
    });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => {
      if (stderr.length < 4096) stderr += c.toString('utf8');
    });
    child.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') reject(new SbkError('getfattr not found: install attr (apt-get install attr)', ExitCode.failure));
      else reject(signal?.aborted ? signal.reason : err);
    });
    child.on('close', (code) => {
      if (signal?.aborted) return reject(signal.reason);
      line(rest);
      if (code === 0) return resolve(found);
      const why = stderr.trim().split('\n').slice(-3).join('; ');
      reject(new SbkError(`getfattr could not read the extended attributes under ${root}: ${why || `exit ${code}`}`, ExitCode.failure));
    });
  });
}
