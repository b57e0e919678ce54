// Several containers in one pipe: every stage handles any number of records and archives in one
// stream (sbk-changelog, sbk-send into a pipe and into a file, sbk-pack local, -o -, --store,
// sbk-snap --confirm with many receipts), the same container named twice is backed up once,
// and the pipelines (local, remote plain and gpg) back up several containers in one run. Every
// container is restored afterwards and compared with its newest snapshot set.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { appendFile, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, sh, treeDiff, type Sandbox } from '../helpers/sandbox.js';
import { remoteEnv, startSshdFor, type Sshd } from '../helpers/sshd.js';

const mode = e2eMode();
const VOLUMES = ['rootfs', 'home'];
const CONTAINERS = ['c1', 'c2', 'c3'];

async function ls(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).sort();
}

describe.skipIf(mode === 'skip')('several containers in one pipe', () => {
  let sb: Sandbox;
  let sshd: Sshd;
  let env: Record<string, string> = {};
  let restored = 0;
  const run = (script: string, extra: Record<string, string> = {}) => sh(script, sb, { env: { ...env, ...extra } });
  /** Plain sh, as cron runs it: no pipefail, the last stage's status is the pipe's. */
  const plainSh = (script: string) =>
    execa('sh', ['-c', script], {
      reject: false,
      stdin: 'ignore',
      env: { ...process.env, ...sb.env, ...env },
    });
  const sets = async (c: string) => (await ls(path.join(sb.backupDir, c))).filter((n) => !n.startsWith('.'));
  const newestSet = async (c: string) => path.join(sb.backupDir, c, (await sets(c)).sort((a, b) => parseInt(a) - parseInt(b)).at(-1)!);
  const change = async (round: string) => {
    for (const c of CONTAINERS) await appendFile(path.join(sb.lxcDir, c, 'home/ubuntu/.bashrc'), `# ${round}\n`);
  };
  /** Restores `c` from `how` (a shell pipe ending in sbk-unpack --as NAME) and compares it with the newest set. */
  const restoreAndCompare = async (c: string, how: (as: string) => string) => {
    const as = `${c}-r${++restored}`;
    const r = await run(how(as));
    expect(r.exitCode, `${c}: ${r.stderr}`).toBe(0);
    await compareAndRemove(c, as);
  };
  /** The restored `as` is identical to c's newest set; then removed (sbk-snap --all must not find it). */
  const compareAndRemove = async (c: string, as: string) => {
    const set = await newestSet(c);
    for (const v of VOLUMES) expect(await treeDiff(path.join(set, v), path.join(sb.lxcDir, as, v)), `${c} ${v}`).toEqual([]);
    for (const v of VOLUMES) await execa('btrfs', ['subvolume', 'delete', path.join(sb.lxcDir, as, v)], { stdin: 'ignore' });
    await rm(path.join(sb.lxcDir, as), { recursive: true, force: true });
  };

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 768 });
    sshd = await startSshdFor(sb);
    env = { ...remoteEnv(sshd), T: sb.dir };
    for (const c of CONTAINERS) await makeContainer(sb, c, { volumes: VOLUMES });
  });
  afterAll(async () => {
    await sshd?.stop();
    await sb?.cleanup();
  });

  it('sbk-snap c1 c2 c3 | sbk-changelog | sbk-send | sbk-pack stores every archive (Full, then incremental), under plain sh too', async () => {
    const full = await run('sbk-snap --keep-snapshots 10 c1 c2 c3 | sbk-changelog | sbk-send | sbk-pack');
    expect(full.exitCode, full.stderr).toBe(0);
    expect(full.stdout.trim().split('\n').map((p) => path.basename(p))).toEqual(
      CONTAINERS.map((c) => expect.stringMatching(new RegExp(`^${c}_\\d+_Full\\.tar\\.gz$`))),
    );
    await change('incremental');
    // cron's sh: no pipefail; the pipe must still store all three and exit 0.
    const incr = await plainSh('sbk-snap --keep-snapshots 10 c1 c2 c3 | sbk-changelog | sbk-send | sbk-pack');
    expect(incr.exitCode, incr.stderr).toBe(0);
    const paths = incr.stdout.trim().split('\n');
    expect(paths.map((p) => path.basename(p))).toEqual(CONTAINERS.map((c) => expect.stringMatching(new RegExp(`^${c}_\\d+\\.tar\\.gz$`))));
    for (const p of paths) expect(existsSync(p.replace(/\.tar\.gz$/, '_changelog.txt'))).toBe(true);
    for (const c of CONTAINERS) await restoreAndCompare(c, (as) => `sbk-plan ${c} | sbk-unpack --as ${as}`);
  });

  it('sbk-snap c1 c1 backs c1 up once and says so', async () => {
    await change('twice');
    const before = (await ls(sb.backupDir)).filter((n) => n.startsWith('c1_'));
    const r = await run('sbk-snap --keep-snapshots 10 c1 c2 c1 | sbk-changelog | sbk-send | sbk-pack');
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/sbk-snap: warning: c1 is named more than once: backed up once/);
    expect(r.stderr).not.toMatch(/broken pipe/);
    expect(r.stdout.trim().split('\n').map((p) => path.basename(p).split('_')[0])).toEqual(['c1', 'c2']);
    expect((await ls(sb.backupDir)).filter((n) => n.startsWith('c1_') && !n.endsWith('_changelog.txt'))).toHaveLength(
      before.filter((n) => !n.endsWith('_changelog.txt')).length + 1,
    );
  });

  it('--all through a file: sbk-send > FILE, then sbk-pack -o - | sbk-pack --store DIR | sbk-snap --confirm with many receipts', async () => {
    await change('file');
    const store = path.join(sb.dir, 'store');
    const send = await run('sbk-snap --keep-snapshots 10 --all | sbk-changelog | sbk-send > "$T/all.tar"');
    expect(send.exitCode, send.stderr).toBe(0);
    const list = await execa('tar', ['tvif', path.join(sb.dir, 'all.tar')]);
    expect(list.stdout.match(/manifest\.json/g)).toHaveLength(3);
    const r = await run(`sbk-pack -o - < "$T/all.tar" | sbk-pack --store "${store}" | sbk-snap --confirm`);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toHaveLength(3);
    for (const c of CONTAINERS) {
      expect(existsSync(path.join(await newestSet(c), '.sbk-confirmed')), c).toBe(true);
      // The chain here, then the store's archive (an incremental on the newest one here).
      await restoreAndCompare(c, (as) => `{ sbk-plan ${c} && ls "${store}"/${c}_*.tar.gz; } | sbk-unpack --as ${as}`);
    }
  });

  it('pipelines/sbk-backup --all stores every container, compressed as asked (sbk-pack\'s --compress and --level)', async () => {
    await change('pipeline');
    // Full: the parents' archives went to the other store above.
    const r = await run('sbk-backup --full --compress zstd --level 5 --all');
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stdout.trim().split('\n')).toHaveLength(3);
    for (const line of r.stdout.trim().split('\n')) expect(line).toMatch(/_Full\.tar\.zst$/);
    for (const c of CONTAINERS) await restoreAndCompare(c, (as) => `sbk-plan ${c} | sbk-unpack --as ${as}`);
  });

  it('pipelines/sbk-backup-remote with several containers (one named twice), restored by sbk-restore-remote', async () => {
    const store = path.join(sb.dir, 'remote-store');
    for (const round of ['full', 'incremental']) {
      await change(`remote ${round}`);
      const r = await run(`sbk-backup-remote --keep-snapshots 10 ${round === 'full' ? '--full ' : ''}"$HOST" "${store}" c1 c2 c3 c1`);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/c1 is named more than once/);
      expect(r.stdout.trim().split('\n')).toHaveLength(3);
    }
    for (const c of CONTAINERS) {
      expect((await ls(store)).filter((n) => n.startsWith(`${c}_`) && n.endsWith('.tar.gz'))).toHaveLength(2);
      await restoreAndCompare(c, (as) => `sbk-restore-remote "$HOST" "${store}" ${c} --as ${as}`);
    }
  });

  it('pipelines/sbk-backup-remote --gpg-passphrase-file with several containers, restored', async () => {
    const gnupg = path.join(sb.dir, 'gnupg');
    await mkdir(gnupg, { mode: 0o700 });
    const key = path.join(sb.dir, 'passphrase');
    await writeFile(key, 'correct horse battery staple\n', { mode: 0o600 });
    const store = path.join(sb.dir, 'encrypted-store');
    const erun = (s: string) => run(s, { GNUPGHOME: gnupg, KEY: key });
    try {
      for (const round of ['full', 'incremental']) {
        await change(`gpg ${round}`);
        const r = await erun(`sbk-backup-remote --gpg-passphrase-file "$KEY" --keep-snapshots 10 ${round === 'full' ? '--full ' : ''}"$HOST" "${store}" c1 c2 c3 c1`);
        expect(r.exitCode, r.stderr).toBe(0);
        expect(r.stderr).toMatch(/c1 is named more than once/);
        expect(r.stdout.trim().split('\n')).toHaveLength(3);
      }
      for (const c of CONTAINERS) {
        expect((await ls(store)).filter((n) => n.startsWith(`${c}_`) && n.endsWith('.tar.gz.gpg'))).toHaveLength(2);
        const as = `${c}-r${++restored}`;
        const r = await erun(`sbk-restore-remote --gpg-passphrase-file "$KEY" "$HOST" "${store}" ${c} --as ${as}`);
        expect(r.exitCode, `${c}: ${r.stderr}`).toBe(0);
        await compareAndRemove(c, as);
      }
    } finally {
      await execa('gpgconf', ['--homedir', gnupg, '--kill', 'all'], { reject: false });
    }
  }, 600_000); // one gpg, ssh and node per archive and per manifest read: slow on a busy machine
});
