// sbk-plan run as a binary on synthetic stores: the paths of the restore chain it prints,
// --list (table and NDJSON), and its exit codes when there is nothing to restore or a gap.
import { describe, it, expect } from 'vitest';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import type { Manifest } from '../../src/formats/archive/archive.js';
import { BIN } from '../helpers/sandbox.js';
import { storeChain4 } from '../helpers/stores.js';
import { tempDirEach } from '../helpers/tempdir.js';

let dir: string;
tempDirEach('sbk-chain-', (d) => (dir = d));

const fileOf = (m: Manifest) => `${m.name}.tar.gz`;

/** F ← I1 ← I2 ← I3 for `container`, stored; returns the manifests. */
const chain4 = (container?: string, t0?: number) => storeChain4(dir, container, t0);

describe('sbk-plan', () => {
  const run = (args: string[], opts: { shell?: string } = {}) =>
    opts.shell
      ? execa('bash', ['-o', 'pipefail', '-c', opts.shell], { reject: false, env: { PATH: `${path.dirname(BIN('x'))}:${process.env.PATH}` } })
      : execa(BIN('sbk-plan'), args, { reject: false });

  it('prints one path per line, oldest first', async () => {
    const ms = await chain4();
    const r = await run(['c1', '--dir', dir]);
    expect(r.exitCode).toBe(0);
    expect(r.stdout.split('\n')).toEqual(ms.map((m) => path.join(dir, fileOf(m))));
    const at = await run(['c1', '--dir', dir, '--at', new Date((ms[1]!.time + 5) * 1000).toISOString()]);
    expect(at.stdout.split('\n')).toEqual(ms.slice(0, 2).map((m) => path.join(dir, fileOf(m))));
  });

  it('--list --json gives NDJSON; a reader leaving early is fine', async () => {
    await chain4();
    const r = await run(['c1', '--dir', dir, '--list', '--json']);
    expect(r.exitCode).toBe(0);
    const rows = r.stdout.split('\n').map((l) => JSON.parse(l) as { name: string; chain: string; size: number });
    expect(rows).toHaveLength(4);
    expect(rows.every((x) => x.chain === 'complete' && x.size > 0)).toBe(true);
    const table = await run(['c1', '--dir', dir, '--list']);
    expect(table.stdout.split('\n')[0]).toMatch(/^DATE +NAME +KIND +SIZE +PARENT +CHAIN$/);
    expect(table.stdout).toMatch(/c1_1700000300 +Incr +\d+ +c1_1700000200 +complete \(4 archives\)/);
    const head = await run([], { shell: `sbk-plan c1 --dir '${dir}' --list | head -1` });
    expect(head.exitCode).toBe(0);
    expect(head.stderr).toBe('');
  });

  it('exits 5 with one line when there is nothing to restore, 2 on a bad --at', async () => {
    const r = await run(['nosuch', '--dir', dir]);
    expect(r.exitCode).toBe(5);
    expect(r.stderr).toBe(`sbk-plan: no backup of nosuch in ${dir}`);
    const bad = await run(['c1', '--dir', dir, '--at', 'soon']);
    expect(bad.exitCode).toBe(2);
    const missing = await run(['c1', '--dir', path.join(dir, 'nope')]);
    expect(missing.exitCode).toBe(5);
    expect(missing.stderr).toMatch(/backup directory .*nope does not exist/);
  });

  it('exits 5 naming the missing parent of a gap', async () => {
    const [, i1] = await chain4();
    await rm(path.join(dir, fileOf(i1!)));
    const r = await run(['c1', '--dir', dir]);
    expect(r.exitCode).toBe(5);
    expect(r.stderr).toContain('needs its parent c1_1700000100');
    expect(r.stdout).toBe('');
  });
});

