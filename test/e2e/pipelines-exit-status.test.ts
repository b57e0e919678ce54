// The pipelines in pipelines/ exit with the status of the FIRST stage that failed (its message
// stays the one that says why), not the last (pipefail's rule); a stage that gets no input at
// all after an upstream failure still fails (plain `sh` pipes must not succeed), saying so.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, sh, type Sandbox } from '../helpers/sandbox.js';
import { remoteEnv, startSshdFor, type Sshd } from '../helpers/sshd.js';

const mode = e2eMode();
const NO_INPUT = /no input \(did the stage before fail\?\)/;

describe.skipIf(mode === 'skip')('pipelines exit with the first failing stage', () => {
  let sb: Sandbox;
  let sshd: Sshd;
  let env: Record<string, string> = {};
  let gnupg = '';
  const run = (script: string, extra: Record<string, string> = {}) => sh(script, sb, { env: { ...env, ...extra } });

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256 });
    sshd = await startSshdFor(sb);
    gnupg = path.join(sb.dir, 'gnupg');
    await mkdir(gnupg, { mode: 0o700 });
    await writeFile(path.join(sb.dir, 'passphrase'), 'pass\n', { mode: 0o600 });
    env = { ...remoteEnv(sshd), STORE: path.join(sb.dir, 'store'), KEY: path.join(sb.dir, 'passphrase'), GNUPGHOME: gnupg };
    // c1 has never been backed up: sbk-snap --incremental fails with 5 (no valid parent).
    await makeContainer(sb, 'c1', { volumes: ['rootfs'], content: false });
  });
  afterAll(async () => {
    await execa('gpgconf', ['--homedir', gnupg, '--kill', 'all'], { reject: false });
    await sshd?.stop();
    await sb?.cleanup();
  });

  it.each([
    ['sbk-backup', 'sbk-backup --incremental c1'],
    ['sbk-backup (no such container)', 'sbk-backup nosuch'],
    ['sbk-backup-remote', 'sbk-backup-remote --incremental "$HOST" "$STORE" c1'],
    ['sbk-backup-remote --gpg-passphrase-file', 'sbk-backup-remote --gpg-passphrase-file "$KEY" --incremental "$HOST" "$STORE" c1'],
    ['sbk-restore', 'sbk-restore nosuch'],
    ['sbk-restore-remote', 'sbk-restore-remote "$HOST" "$STORE" nosuch'],
    ['sbk-restore-remote --gpg-passphrase-file', 'sbk-restore-remote --gpg-passphrase-file "$KEY" "$HOST" "$STORE" nosuch'],
  ])('%s: the first stage fails with 5, the pipeline exits 5', async (_name, cmd) => {
    await mkdir(env.STORE!, { recursive: true });
    const r = await run(cmd);
    expect(r.exitCode, r.stderr).toBe(5);
    // The first stage's message comes first.
    expect(r.stderr.split('\n')[0]).toMatch(/^sbk-(snap|plan): |sbk-restore-remote: no encrypted backup|^no encrypted backup|no backup of nosuch/);
  });

  it('under plain sh (no pipefail) the pipe still fails, and each later stage says it got nothing', async () => {
    const r = await execa('sh', ['-c', 'sbk-snap --incremental c1 | sbk-changelog | sbk-send | sbk-pack; echo "status $?"'], {
      reject: false,
      stdin: 'ignore',
      env: { ...process.env, ...sb.env, ...env },
    });
    expect(r.stdout).toMatch(/status 3/);
    expect(r.stderr.split('\n')[0]).toMatch(/^sbk-snap: c1: /);
    for (const stage of ['sbk-changelog', 'sbk-send', 'sbk-pack']) expect(r.stderr).toMatch(new RegExp(`${stage}: ${NO_INPUT.source}`));
  });

  it.each([
    ['sbk-changelog', 'sbk-changelog'],
    ['sbk-send', 'sbk-send'],
    ['sbk-pack', 'sbk-pack'],
    ['sbk-pack -o -', 'sbk-pack -o - > /dev/null'],
    ['sbk-pack --store', 'sbk-pack --store "$STORE"'],
    ['sbk-snap --confirm', 'sbk-snap --confirm'],
    ['sbk-unpack', 'sbk-unpack --as x'],
  ])('%s with no input at all: exit 3, "no input (did the stage before fail?)"', async (_name, cmd) => {
    const r = await run(`${cmd} < /dev/null`);
    expect(r.exitCode, r.stderr).toBe(3);
    expect(r.stderr).toMatch(NO_INPUT);
  });
});
