// sbk-unpack stopped by a signal while it waits for the first bytes of stdin (a slow ssh pipe,
// a writer that has not started): it must stop at once with 130/143, not wait for the writer.
import { describe, it, expect } from 'vitest';
import { execa } from 'execa';
import { BIN } from '../helpers/sandbox.js';
import { signalHandlersInstalled } from '../helpers/wait.js';

describe('sbk-unpack waiting for stdin', () => {
  for (const [sig, code] of [['SIGTERM', 143], ['SIGINT', 130]] as const) {
    for (const [verify, listed] of [[false, false], [true, false], [false, true]]) {
      it(`${sig}${verify ? ' (--verify)' : ''}${listed ? ' in a list of paths' : ''}: exit ${code} at once, cleaning up once`, async () => {
        // stdin: a pipe whose writer (this test) never writes nor closes it.
        const child = execa(BIN('sbk-unpack'), verify ? ['--verify'] : ['--as', 'x'], {
          stdin: 'pipe',
          reject: false,
          env: { SBK_LXC_DIR: '/nonexistent-sbk-lxc' },
        });
        let stderr = '';
        child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
        // A list of paths whose end has not come yet (more than the 512 bytes sniffed).
        if (listed) child.stdin!.write('/nonexistent/x_1_Full.tar.gz\n'.repeat(40));
        await signalHandlersInstalled(child.pid!); // started, and waiting on stdin
        child.kill(sig);
        // Not stopping would hang until this SIGKILL (exit code null): the code proves "at once".
        const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
        const r = await child;
        clearTimeout(timer);
        expect(r.exitCode, stderr).toBe(code);
        expect(stderr.match(/interrupted|terminated/g)).toHaveLength(1);
        expect(stderr).not.toMatch(/internal error|\n\s+at /);
      }, 60_000);
    }
  }
});
