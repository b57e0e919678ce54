// sbk-plan --prune [--delete] run as a binary on a directory of synthetic archives: what it
// would remove, what it removes, and its errors.
import { describe, it, expect, beforeEach, afterEach } from 'vitest';
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { filesOf } from '../../src/stages/plan/prune.js';
import type { Manifest } from '../../src/formats/archive/archive.js';
import { synthArchive } from '../fixtures/archives/synthetic.js';
import { BIN } from '../helpers/sandbox.js';
import { store } from '../helpers/stores.js';

describe('sbk-plan --prune', () => {
  let dir: string;
  let ms: Manifest[];
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'sbk-prune-'));
    ms = store(['F', 'I', 'I', 'F', 'I']).ms;
    for (const m of ms) await writeFile(path.join(dir, `${m.name}.tar.gz`), await synthArchive(m));
    // Changelog sidecars of the incrementals.
    for (const m of ms.filter((x) => !x.full)) await writeFile(path.join(dir, `c1_${m.time}_changelog.txt`), 'added /x\n');
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const plan = (args: string[]) => execa(BIN('sbk-plan'), ['c1', '--dir', dir, ...args], { reject: false, env: { TZ: 'UTC' } });
  const p = (m: Manifest) => path.join(dir, `${m.name}.tar.gz`);
  const cl = (m: Manifest) => path.join(dir, `c1_${m.time}_changelog.txt`);

  it('prints what may go, newest first, each sidecar before its archive; removes nothing', async () => {
    const r = await plan(['--prune', '--keep-last', '2']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.split('\n')).toEqual([cl(ms[2]!), p(ms[2]!), cl(ms[1]!), p(ms[1]!), p(ms[0]!)]);
    expect((await readdir(dir)).length).toBe(8);
  });

  it('--delete removes them under the lock and what is left still plans', async () => {
    const r = await plan(['--prune', '--keep-last', '1', '--delete']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.split('\n')).toHaveLength(5);
    expect((await readdir(dir)).filter((n) => n !== '.locks').sort()).toEqual(
      [`${ms[3]!.name}.tar.gz`, `${ms[4]!.name}.tar.gz`, `c1_${ms[4]!.time}_changelog.txt`].sort(),
    );
    const again = await execa(BIN('sbk-plan'), ['c1', '--dir', dir], { reject: false });
    expect(again.stdout.split('\n')).toEqual([p(ms[3]!), p(ms[4]!)]);
    // Nothing more to remove: no output, exit 0.
    const none = await plan(['--prune', '--keep-last', '1', '--delete']);
    expect(none.exitCode).toBe(0);
    expect(none.stdout).toBe('');
  });

  it('--json gives every backup with its action and reasons', async () => {
    const r = await plan(['--prune', '--keep-last', '1', '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const rows = r.stdout.split('\n').map((l) => JSON.parse(l));
    expect(rows.map((x) => [x.name, x.action])).toEqual(
      [...ms].reverse().map((m, i) => [m.name, i < 2 ? 'keep' : 'remove']),
    );
    expect(rows[0].reasons).toEqual(['last']);
    expect(rows[1].reasons).toEqual([`needed by ${ms[4]!.name}`]);
    expect(rows[2].files).toEqual([cl(ms[2]!), p(ms[2]!)]);
  });

  it("removes a Full's sidecars under both names: <archive base>_changelog.txt and the older <c>_<time>_changelog.txt", async () => {
    const f = ms[0]!;
    const now = path.join(dir, `${f.name}_changelog.txt`);
    const old = path.join(dir, `c1_${f.time}_changelog.txt`);
    await writeFile(now, 'added /\n');
    await writeFile(old, 'added /\n');
    const r = await plan(['--prune', '--keep-last', '2', '--delete']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.split('\n')).toEqual([cl(ms[2]!), p(ms[2]!), cl(ms[1]!), p(ms[1]!), now, old, p(f)]);
    expect((await readdir(dir)).filter((n) => n !== '.locks').sort()).toEqual(
      [`${ms[3]!.name}.tar.gz`, `${ms[4]!.name}.tar.gz`, `c1_${ms[4]!.time}_changelog.txt`].sort(),
    );
  });

  it("leaves the older name to an incremental of the same second that owns it", async () => {
    const f = ms[0]!;
    // An incremental archive at the Full's time (another chain's): c1_<time>_changelog.txt is its.
    await writeFile(path.join(dir, `c1_${f.time}.tar.gz`), 'not an archive');
    await writeFile(path.join(dir, `c1_${f.time}_changelog.txt`), 'added /\n');
    const present = new Set(await readdir(dir));
    const files = filesOf({ path: p(f), file: `${f.name}.tar.gz`, container: 'c1', time: f.time, full: true, name: f.name, size: 1, legacy: false }, present);
    expect(files).toEqual([`${f.name}.tar.gz`]);
  });

  it.each([
    [['--prune'], /--prune needs a policy/],
    [['--prune', '--keep-last', '0'], /--prune needs a policy/],
    [['--keep-last', '2'], /--keep-last goes with --prune/],
    [['--prune', '--keep-daily', '-1'], /--keep-daily takes a whole number/],
    [['--delete'], /--delete goes with --prune/],
    [['--prune', '--keep-last', '1', '--at', '5'], /mutually exclusive|conflict|not go together/i],
  ])('usage %j is exit 2', async (args, msg) => {
    const r = await plan(args);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(msg);
  });

  it('no backup of the container is exit 5', async () => {
    const r = await execa(BIN('sbk-plan'), ['nosuch', '--dir', dir, '--prune', '--keep-last', '1'], { reject: false });
    expect(r.exitCode).toBe(5);
    expect(r.stderr).toMatch(/no backup of nosuch/);
  });
});
