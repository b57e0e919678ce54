// The remote pipelines with a store directory whose name holds spaces, quotes and a `$`: the
// words reach the remote shell quoted, plain and encrypted, backup and restore.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { e2eMode, makeSandbox, makeContainer, sh, treeDiff, ROOT, type Sandbox } from '../helpers/sandbox.js';
import { startSshd, type Sshd } from '../helpers/sshd.js';

const mode = e2eMode();
const gpgPresent = existsSync('/usr/bin/gpg');

describe.skipIf(mode === 'skip')('remote pipelines: a store DIR with spaces and quotes', () => {
  let sb: Sandbox;
  let sshd: Sshd;
  let env: Record<string, string> = {};
  const run = (script: string, extra: Record<string, string> = {}) => sh(script, sb, { env: { ...env, ...extra } });
  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 300 });
    try {
      sshd = await startSshd();
    } catch (err) {
      await sb.cleanup();
      throw err;
    }
    env = {
      SBK_SSH: sshd.sshCommand,
      SBK_REMOTE_PATH: path.join(ROOT, 'bin'),
      HOST: sshd.host,
      PATH: `${path.join(ROOT, 'pipelines')}:${path.join(ROOT, 'bin')}:${process.env.PATH}`,
    };
    await makeContainer(sb, 'c1', { volumes: ['rootfs', 'home'] });
  });
  afterAll(async () => {
    await sshd?.stop();
    await sb?.cleanup();
  });

  it('plain: backs up twice and restores', async () => {
    const store = path.join(sb.dir, `it's a "store" $HOME`);
    for (let i = 0; i < 2; i++) {
      await writeFile(path.join(sb.lxcDir, 'c1/rootfs/etc/round'), String(i));
      const r = await run('sbk-backup-remote "$HOST" "$STORE" c1', { STORE: store });
      expect(r.exitCode, r.stderr).toBe(0);
    }
    expect((await readdir(store)).filter((n) => n.endsWith('.tar.gz'))).toHaveLength(2);
    const r = await run('sbk-restore-remote "$HOST" "$STORE" c1 --as r1', { STORE: store });
    expect(r.exitCode, r.stderr).toBe(0);
    expect(await treeDiff(path.join(sb.lxcDir, 'c1/rootfs'), path.join(sb.lxcDir, 'r1/rootfs'))).toEqual([]);
  });

  it.skipIf(!gpgPresent && !process.env.CI)('encrypted: backs up twice and restores', async () => {
    const gnupg = path.join(sb.dir, 'gnupg');
    await mkdir(gnupg, { mode: 0o700 });
    const key = path.join(sb.dir, 'pass phrase');
    await writeFile(key, 'secret\n', { mode: 0o600 });
    const store = path.join(sb.dir, `enc 'store' "x" $y`);
    const extra = { STORE: store, KEY: key, GNUPGHOME: gnupg };
    for (let i = 0; i < 2; i++) {
      await writeFile(path.join(sb.lxcDir, 'c1/rootfs/etc/round'), `e${i}`);
      const r = await run(`sbk-backup-remote ${i === 0 ? '--full ' : ''}--gpg-passphrase-file "$KEY" "$HOST" "$STORE" c1`, extra);
      expect(r.exitCode, r.stderr).toBe(0);
    }
    expect((await readdir(store)).filter((n) => n.endsWith('.tar.gz.gpg'))).toHaveLength(2);
    const r = await run('sbk-restore-remote --gpg-passphrase-file "$KEY" "$HOST" "$STORE" c1 --as r2', extra);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(await treeDiff(path.join(sb.lxcDir, 'c1/rootfs'), path.join(sb.lxcDir, 'r2/rootfs'))).toEqual([]);
  });

  // A run that fails after its file took its final name (ssh drops after the remote ln, or the
  // local confirmation fails) leaves an archive whose set is never confirmed: the next backup is
  // a child of the one before it. Planning by name would put the orphan in that backup's chain,
  // and sbk-unpack would refuse the next archive as not its child.
  it.skipIf(!gpgPresent && !process.env.CI)('encrypted: a backup stored but never confirmed is left out of later chains', async () => {
    const gnupg = path.join(sb.dir, 'gnupg3');
    await mkdir(gnupg, { mode: 0o700 });
    const key = path.join(sb.dir, 'key3');
    await writeFile(key, 'secret3\n', { mode: 0o600 });
    // A DIR with '..' in it: the receipt (and the confirmation made from it) names the file by
    // its absolute, resolved path on HOST.
    const extra = { STORE: `${sb.dir}/sub/../orphans`, KEY: key, GNUPGHOME: gnupg };
    const round = path.join(sb.lxcDir, 'c1/rootfs/etc/round');
    const backup = async (content: string, full = false) => {
      await writeFile(round, content);
      const r = await run(`sbk-backup-remote ${full ? '--full ' : ''}--gpg-passphrase-file "$KEY" "$HOST" "$STORE" c1`, extra);
      expect(r.exitCode, r.stderr).toBe(0);
    };
    await backup('full', true);
    const full = (await readdir(path.join(sb.backupDir, 'c1'))).filter((n) => /^\d+_Full$/.test(n)).sort().at(-1)!;
    const confirmation = JSON.parse(await readFile(path.join(sb.backupDir, 'c1', full, '.sbk-confirmed'), 'utf8')) as { path: string };
    expect(confirmation.path).toBe(path.join(sb.dir, 'orphans', `c1_${full}.tar.gz.gpg`));
    await backup('orphan');
    const sets = (await readdir(path.join(sb.backupDir, 'c1'))).filter((n) => /^\d+(_Full)?$/.test(n)).sort();
    const orphan = sets.at(-1)!;
    await rm(path.join(sb.backupDir, 'c1', orphan, '.sbk-confirmed'));
    await backup('last');
    const restore = async (as: string, at = '') => {
      const r = await run(`sbk-restore-remote --gpg-passphrase-file "$KEY" "$HOST" "$STORE" c1 ${at ? `--at ${at} ` : ''}--as ${as}`, extra);
      expect(r.exitCode, r.stderr).toBe(0);
      return readFile(path.join(sb.lxcDir, as, 'rootfs/etc/round'), 'utf8');
    };
    expect(await restore('r4')).toBe('last');
    expect(await restore('r5', orphan)).toBe('orphan'); // the orphan itself is a good restore point
  });
});
