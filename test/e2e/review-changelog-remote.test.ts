// The remote pipelines with a store directory whose name holds spaces, quotes and a `$`: the
// words reach the remote shell quoted, plain and encrypted, backup and restore.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
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
});
