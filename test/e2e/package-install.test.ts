// The npm package: `npm pack` of a checkout builds what the binaries load and ships only that
// (bin/, the bundles, pipelines/, man/); `npm install -g --prefix P` of the tarball, with the
// runtime dependencies only, gives working binaries in P/bin (the pipelines too, finding the
// sbk binaries through their own symlinks), man pages under P/share/man, and a demo that runs.
// The pack is made in a copy of the checkout, so that its build never swaps dist/bundle under
// other tests running from this one.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { copyFile, mkdir, mkdtemp, readdir, rm, symlink } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, ROOT, unmount } from '../helpers/sandbox.js';

const mode = e2eMode();
const pkg = JSON.parse(readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { bin: Record<string, string>; version: string };
const BINARIES = Object.keys(pkg.bin);

/** The mount points under `dir` (the demo's, if it was stopped before its own clean-up). */
function mountsUnder(dir: string): string[] {
  return readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1] ?? '')
    .map((m) => m.replace(/\\040/g, ' '))
    .filter((m) => m.startsWith(dir + '/'));
}

describe.skipIf(mode === 'skip')('npm pack and npm install -g', () => {
  let tmp = '';
  let prefix = '';
  let tarball = '';
  let files: string[] = [];
  // Only the installed binaries and the system's: never this checkout's bin/.
  const env = () => ({ ...process.env, PATH: `${path.join(prefix, 'bin')}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin` });

  beforeAll(async () => {
    tmp = await mkdtemp(path.join(os.tmpdir(), 'sbk-package-'));
    prefix = path.join(tmp, 'prefix');
    const copy = path.join(tmp, 'checkout');
    // The tracked files, without dist/ (what a fresh clone has); the devDependencies linked in.
    const tracked = (await execa('git', ['-C', ROOT, 'ls-files', '-z'])).stdout.split('\0').filter(Boolean);
    for (const f of tracked) {
      await mkdir(path.dirname(path.join(copy, f)), { recursive: true });
      await copyFile(path.join(ROOT, f), path.join(copy, f)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err; // deleted in the work tree, not yet committed
      });
    }
    await symlink(path.join(ROOT, 'node_modules'), path.join(copy, 'node_modules'));
    const out = path.join(tmp, 'out');
    await mkdir(out);
    await execa('npm', ['pack', '--pack-destination', out, '--loglevel=error'], { cwd: copy, stdin: 'ignore' });
    tarball = path.join(out, `sbk-${pkg.version}.tgz`);
    files = (await execa('tar', ['tzf', tarball])).stdout.split('\n').map((f) => f.replace(/^package\//, ''));
    await execa('npm', ['install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', '--loglevel=error', tarball], {
      cwd: out,
      stdin: 'ignore',
    });
  }, 600_000);

  afterAll(async () => {
    if (!tmp) return;
    for (const m of mountsUnder(tmp).sort((a, b) => b.length - a.length)) await unmount(m);
    await rm(tmp, { recursive: true, force: true });
  });

  it('the tarball holds the built binaries, pipelines and man pages, and no tests, bench or sources', () => {
    expect(files).toContain('dist/bundle/snap.mjs');
    for (const b of Object.values(pkg.bin)) expect(files).toContain(b);
    expect(files).toContain('man/sbk.7');
    expect(files).toContain('man/sbk-snap.1');
    expect(files).toContain('README.md');
    expect(files.filter((f) => /^(test|bench|src)\//.test(f) || f.endsWith('.map') || f.startsWith('dist/cli/'))).toEqual([]);
  });

  it('every binary of the installed package answers --help', async () => {
    expect((await readdir(path.join(prefix, 'bin'))).sort()).toEqual(BINARIES.slice().sort());
    for (const b of BINARIES) {
      const r = await execa(path.join(prefix, 'bin', b), ['--help'], { reject: false, env: env(), stdin: 'ignore' });
      expect(r.stderr, b).toBe('');
      expect(r.exitCode, b).toBe(0);
      expect(r.stdout, b).toMatch(/usage|sbk/i);
    }
  });

  it('man finds the pages under the prefix', async () => {
    for (const page of ['sbk-snap', 'sbk-unpack', 'sbk']) {
      const r = await execa('man', ['-w', page], { env: { ...env(), MANPATH: path.join(prefix, 'share', 'man') }, stdin: 'ignore' });
      expect(r.stdout.trim().startsWith(prefix + '/'), r.stdout).toBe(true);
    }
  });

  it('the installed sbk-demo backs up, restores and proves the restore on a loop image, and cleans up', async () => {
    const demoTmp = path.join(tmp, 'demo');
    await mkdir(demoTmp);
    const r = await execa(path.join(prefix, 'bin', 'sbk-demo'), [], {
      reject: false,
      env: { ...env(), TMPDIR: demoTmp },
      stdin: 'ignore',
      all: true,
    });
    expect(r.exitCode, r.all).toBe(0);
    expect(r.all).toMatch(/Full backup/);
    expect(r.all).toMatch(/demo_\d+_Full\.tar\.gz/);
    expect(r.all).toMatch(/Demo finished/);
    expect(mountsUnder(demoTmp)).toEqual([]);
    expect(await readdir(demoTmp)).toEqual([]);
  }, 900_000);
});
