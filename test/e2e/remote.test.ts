// Remote storage over a real OpenSSH server on 127.0.0.1 (started here, stopped in teardown):
// backups whose archives are verified and stored on the "remote" side by sbk-pack --store and
// confirmed here by its receipts; a cut transfer that stores and confirms nothing; restores
// from the remote store identical to the snapshots; the gpg round trip; --max-chain and
// --keep-snapshots through --confirm; a store directory whose name needs quoting. The remote is
// this machine, reached through sshd, with the repository's bin/ as SBK_REMOTE_PATH; its store
// is a plain directory (no BTRFS).
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { appendFile, mkdir, readdir, readFile, writeFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, randomish, sh, treeDiff, type Sandbox } from '../helpers/sandbox.js';
import { remoteEnv, startSshdFor, type Sshd } from '../helpers/sshd.js';

const mode = e2eMode();
const gpgPresent = existsSync('/usr/bin/gpg');

async function ls(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).sort();
}
const sha = async (f: string) => createHash('sha256').update(await readFile(f)).digest('hex');

async function volumeDiffs(set: string, restored: string, volumes: string[]): Promise<string[]> {
  const out: string[] = [];
  for (const v of volumes) for (const d of await treeDiff(path.join(set, v), path.join(restored, v))) out.push(`${v}: ${d}`);
  return out;
}

describe.skipIf(mode === 'skip')('remote storage over ssh (real sshd)', () => {
  let sb: Sandbox;
  let sshd: Sshd;
  let store = '';
  let env: Record<string, string> = {};
  const run = (script: string, extra: Record<string, string> = {}) => sh(script, sb, { env: { ...env, ...extra } });
  const sets = async (c: string) => (await ls(path.join(sb.backupDir, c))).filter((n) => !n.startsWith('.'));
  const confirmedSets = async (c: string) => {
    const out: string[] = [];
    for (const s of await sets(c)) if (existsSync(path.join(sb.backupDir, c, s, '.sbk-confirmed'))) out.push(s);
    return out;
  };
  const archives = async (dir: string, c: string) => (await ls(dir)).filter((n) => n.startsWith(`${c}_`) && !n.endsWith('_changelog.txt'));

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 512 });
    sshd = await startSshdFor(sb);
    store = path.join(sb.dir, 'remote-store'); // a plain directory: the store host has no BTRFS
    env = { ...remoteEnv(sshd), STORE: store };
    await makeContainer(sb, 'c1', { volumes: ['rootfs', 'home', 'var'] });
  });
  afterAll(async () => {
    await sshd?.stop();
    await sb?.cleanup();
  });

  const points: { name: string; set: string }[] = [];

  it('backs up over ssh: Full, then incrementals, each confirmed by its receipt', async () => {
    const c = path.join(sb.lxcDir, 'c1');
    const r = await run('sbk-backup-remote --keep-snapshots 10 "$HOST" "$STORE" c1');
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/no valid parent backup, making a Full backup/);
    const [full] = await archives(store, 'c1');
    expect(full).toMatch(/^c1_\d+_Full\.tar\.gz$/);
    // --confirm prints where each confirmed archive is.
    expect(r.stdout.trim()).toBe(`${(await execa('hostname')).stdout.trim()}:${path.join(store, full!)}`);
    // Nothing is stored locally; the set is confirmed with the receipt's facts.
    expect((await ls(sb.backupDir)).filter((n) => n.endsWith('.tar.gz'))).toEqual([]);
    const set1 = path.join(sb.backupDir, 'c1', (await sets('c1'))[0]!);
    const conf = JSON.parse(await readFile(path.join(set1, '.sbk-confirmed'), 'utf8'));
    expect(conf).toMatchObject({ sbk: 'confirmation', name: full!.replace('.tar.gz', ''), path: path.join(store, full!), depth: 0 });
    expect(conf.sha256).toBe(await sha(path.join(store, full!)));
    expect(existsSync(path.join(set1, '.sbk-run'))).toBe(false);
    points.push({ name: full!.replace('.tar.gz', ''), set: set1 });

    // The pipeline of the README, spelled out, for an incremental.
    await appendFile(path.join(c, 'var/log/syslog'), 'after the full\n');
    await writeFile(path.join(c, 'home/ubuntu/new file'), 'new\n');
    const i1 = await run(
      'sbk-snap --keep-snapshots 10 c1 | sbk-changelog | sbk-send | sbk-pack -o - | $SBK_SSH "$HOST" "$SBK_REMOTE_PATH/sbk-pack --store $STORE" | sbk-snap --confirm',
    );
    expect(i1.exitCode, i1.stderr).toBe(0);
    await rm(path.join(c, 'rootfs/etc/file with spaces.conf'));
    await writeFile(path.join(c, 'home/ubuntu/big'), randomish(512 * 1024, 4));
    const i2 = await run('sbk-backup-remote -v --keep-snapshots 10 "$HOST" "$STORE" c1');
    expect(i2.exitCode, i2.stderr).toBe(0);
    expect(i2.stderr).toMatch(/sbk-pack: c1_\d+: stored /); // the remote side's messages come back through ssh

    const names = await archives(store, 'c1');
    expect(names).toHaveLength(3);
    expect(names.slice(1).every((n) => /^c1_\d+\.tar\.gz$/.test(n))).toBe(true);
    const s = await sets('c1');
    expect(await confirmedSets('c1')).toEqual(s);
    for (const n of s.slice(1)) points.push({ name: `c1_${n}`, set: path.join(sb.backupDir, 'c1', n) });
    // Changelog sidecars are stored next to the incrementals.
    expect(await readFile(path.join(store, `c1_${s[2]}_changelog.txt`), 'utf8')).toMatch(/^deleted \/etc\/file with spaces\.conf$/m);
    // Each incremental's parent is the one before; the store plans a complete chain.
    const list = await run('sbk-plan c1 --dir "$STORE" --list --json');
    expect(list.stdout.trim().split('\n').map((l) => JSON.parse(l).chain)).toEqual(['complete', 'complete', 'complete']);
  });

  it('restores from the remote store, every point, identical to its snapshots', async () => {
    const vols = ['rootfs', 'home', 'var'];
    for (const [i, p] of points.entries()) {
      const t = /_(\d+)(_Full)?$/.exec(p.name)![1];
      const r = await run(`sbk-restore-remote "$HOST" "$STORE" c1 --at ${t} --as rr${i}`);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(await volumeDiffs(p.set, path.join(sb.lxcDir, `rr${i}`), vols)).toEqual([]);
    }
    // The newest by default; an existing target is refused with sbk-unpack's status.
    const again = await run('sbk-restore-remote "$HOST" "$STORE" c1 --as rr2');
    expect(again.exitCode).toBe(6);
    const none = await run('sbk-restore-remote "$HOST" "$STORE" nosuch');
    expect(none.exitCode).toBe(5);
    expect(none.stderr).toMatch(/no backup of nosuch/);
  });

  it('a cut ssh transfer stores nothing and confirms nothing; the next backup uses the last confirmed parent', async () => {
    const before = await ls(store);
    const setsBefore = await sets('c1');
    await writeFile(path.join(sb.lxcDir, 'c1/home/ubuntu/more'), randomish(2 * 1024 * 1024, 8));
    const r = await run(
      'sbk-snap --keep-snapshots 10 c1 | sbk-changelog | sbk-send | sbk-pack -o - | head -c 300000 | $SBK_SSH "$HOST" "$SBK_REMOTE_PATH/sbk-pack --store $STORE" | sbk-snap --confirm',
    );
    // A bare pipe under pipefail: the last failure wins, sbk-snap --confirm that got nothing (the
    // pipelines report the first one, sbk-pack --store's 4: below).
    expect(r.exitCode).toBe(3);
    expect(r.stderr).toMatch(/sbk-pack: stdin: the gzip stream is cut short/);
    expect(r.stderr).toMatch(/sbk-snap: no input \(did the stage before fail\?\): no receipts on stdin: nothing confirmed/);
    expect(await ls(store)).toEqual(before); // no final name, no temporary file
    const added = (await sets('c1')).filter((s) => !setsBefore.includes(s));
    expect(added).toHaveLength(1);
    expect(existsSync(path.join(sb.backupDir, 'c1', added[0]!, '.sbk-confirmed'))).toBe(false);
    // The connection cut by the ssh command itself (a wrapper passing on only 200 kB): the same.
    const wrapper = path.join(sb.dir, 'cutssh');
    await writeFile(wrapper, `#!/bin/bash\nhead -c 200000 | ${sshd.sshCommand} "$@"\n`, { mode: 0o755 });
    const viaWrapper = await run('sbk-backup-remote --keep-snapshots 10 "$HOST" "$STORE" c1', { SBK_SSH: wrapper });
    expect(viaWrapper.exitCode).toBe(4);
    expect(await ls(store)).toEqual(before);
    expect(await confirmedSets('c1')).toEqual(setsBefore);
    const next = await run('sbk-snap c1');
    expect(next.exitCode, next.stderr).toBe(0);
    expect(JSON.parse(next.stdout).parent.name).toBe(points[points.length - 1]!.name);
  });

  it('ssh failing to connect is exit 1 with a message, and confirms nothing', async () => {
    const r = await run('sbk-backup-remote "$HOST" "$STORE" c1', { SBK_SSH: `${sshd.sshCommand} -o Port=1` });
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/ssh to sbk-test failed/);
  });

  it('--max-chain through the remote pipeline: after N incrementals the next backup is a Full', async () => {
    await makeContainer(sb, 'c3', { volumes: ['rootfs'], content: false });
    const kinds: string[] = [];
    for (let i = 0; i < 5; i++) {
      await writeFile(path.join(sb.lxcDir, 'c3/rootfs/n'), String(i));
      const r = await run('sbk-backup-remote --max-chain 2 --keep-snapshots 10 "$HOST" "$STORE" c3');
      expect(r.exitCode, r.stderr).toBe(0);
      if (i === 3) expect(r.stderr).toMatch(/2 incrementals since the last Full \(--max-chain 2\); making a Full backup/);
    }
    for (const a of await archives(store, 'c3')) kinds.push(a.endsWith('_Full.tar.gz') ? 'F' : 'I');
    expect(kinds).toEqual(['F', 'I', 'I', 'F', 'I']);
    const depths = [];
    for (const s of await sets('c3')) depths.push(JSON.parse(await readFile(path.join(sb.backupDir, 'c3', s, '.sbk-confirmed'), 'utf8')).depth);
    expect(depths).toEqual([0, 1, 2, 0, 1]);
  });

  it('--confirm keeps 2 confirmed sets by default (the next parent among them) and removes sets of failed runs', async () => {
    // A failed run (cut): its set stays unconfirmed until a later confirmation removes it.
    const cut = await run('sbk-snap c3 | sbk-changelog | sbk-send | sbk-pack -o - | head -c 100 | $SBK_SSH "$HOST" "$SBK_REMOTE_PATH/sbk-pack --store $STORE" | sbk-snap --confirm');
    expect(cut.exitCode).toBe(3); // pipefail: the last failure, sbk-snap --confirm that got no receipts
    expect(cut.stderr).toMatch(/sbk-pack: stdin: the gzip stream is cut short/);
    const failed = (await sets('c3')).at(-1)!;
    expect(existsSync(path.join(sb.backupDir, 'c3', failed, '.sbk-confirmed'))).toBe(false);
    const r = await run('sbk-backup-remote "$HOST" "$STORE" c3');
    expect(r.exitCode, r.stderr).toBe(0);
    const left = await sets('c3');
    expect(left).toHaveLength(2);
    expect(await confirmedSets('c3')).toEqual(left);
    expect(left).not.toContain(failed);
    // The next backup is an incremental against the newest of them.
    const next = JSON.parse((await run('sbk-snap c3')).stdout);
    expect(next.parent.set).toBe(path.join(sb.backupDir, 'c3', left[1]!));
  });

  it('receipts for a set that is not here, or for other snapshots of the same name, confirm nothing', async () => {
    const receipt = (o: object) =>
      JSON.stringify({ sbk: 'receipt', format: 1, name: 'c3_1000_Full', container: 'c3', time: 1000, full: true, ...o });
    const missing = await sh('sbk-snap --confirm', sb, { input: receipt({}) + '\n' });
    expect(missing.exitCode).toBe(5);
    expect(missing.stderr).toMatch(/c3_1000_Full: no snapshot set .* to confirm/);
    // The newest set (unconfirmed: made by the last `sbk-snap c3`), with UUIDs that are not its own.
    const s = (await sets('c3')).at(-1)!;
    const [time] = s.split('_');
    const other = receipt({ name: `c3_${time}`, time: Number(time), full: false, volumes: [{ name: 'rootfs', uuid: '00000000-0000-0000-0000-000000000000' }] });
    const bad = await sh('sbk-snap --confirm', sb, { input: other + '\n' });
    expect(bad.exitCode).toBe(4);
    expect(bad.stderr).toMatch(/the receipt does not match the snapshot set/);
    expect(existsSync(path.join(sb.backupDir, 'c3', s, '.sbk-confirmed'))).toBe(false);
    const junk = await sh('sbk-snap --confirm', sb, { input: receipt({}) + '\n{"sbk":"receipt",\n' });
    // Line 1 names no set here (said, the others go on); line 2 is malformed: that stops it, exit 3.
    expect(junk.exitCode).toBe(3);
    expect(junk.stderr).toMatch(/c3_1000_Full: no snapshot set/);
    expect(junk.stderr).toMatch(/receipt on line 2: malformed JSON/);
    const malformed = await sh('sbk-snap --confirm', sb, { input: 'not json\n' });
    expect(malformed.exitCode).toBe(3);
    const malformed2 = await sh('sbk-snap --confirm', sb, { input: '{"sbk":"receipt"\n' });
    expect(malformed2.exitCode).toBe(3);
    expect(malformed2.stderr).toMatch(/receipt on line 1: malformed JSON/);
  });

  describe.skipIf(!gpgPresent && !process.env.CI)('encryption by composition (gpg --symmetric)', () => {
    let gnupg = '';
    let estore = '';
    let key = '';
    beforeAll(async () => {
      gnupg = path.join(sb.dir, 'gnupg');
      await mkdir(gnupg, { mode: 0o700 });
      estore = path.join(sb.dir, 'encrypted-store');
      key = path.join(sb.dir, 'passphrase');
      await writeFile(key, 'correct horse battery staple\n', { mode: 0o600 });
      await makeContainer(sb, 'c2', { volumes: ['rootfs', 'home'] });
    });
    afterAll(async () => {
      // gpg may have started an agent for this home: stop it.
      await execa('gpgconf', ['--homedir', gnupg, '--kill', 'all'], { reject: false });
    });
    const erun = (script: string) => run(script, { GNUPGHOME: gnupg, ESTORE: estore, KEY: key });

    it('stores opaque files named after the backups and restores them, identical', async () => {
      expect((await execa('which', ['gpg'], { reject: false })).exitCode, 'gpg must be installed (apt-get install gnupg)').toBe(0);
      const f = await erun('sbk-backup-remote --gpg-passphrase-file "$KEY" --keep-snapshots 10 "$HOST" "$ESTORE" c2');
      expect(f.exitCode, f.stderr).toBe(0);
      await writeFile(path.join(sb.lxcDir, 'c2/home/ubuntu/secret'), 'changed after the full\n');
      const i = await erun('sbk-backup-remote --gpg-passphrase-file "$KEY" --keep-snapshots 10 "$HOST" "$ESTORE" c2');
      expect(i.exitCode, i.stderr).toBe(0);
      const files = await ls(estore);
      expect(files).toHaveLength(2);
      expect(files[0]).toMatch(/^c2_\d+_Full\.tar\.gz\.gpg$/);
      expect(files[1]).toMatch(/^c2_\d+\.tar\.gz\.gpg$/);
      // Opaque: not gzip, no manifest in clear, sbk-plan sees no archive there.
      for (const n of files) {
        const head = (await readFile(path.join(estore, n))).subarray(0, 2);
        expect(head.equals(Buffer.from([0x1f, 0x8b]))).toBe(false);
      }
      expect((await readFile(path.join(estore, files[0]!))).includes('manifest.json')).toBe(false);
      // Both sets confirmed from the receipts the pipeline made (sha256 of the ciphertext).
      const s = await sets('c2');
      expect(await confirmedSets('c2')).toEqual(s);
      const conf = JSON.parse(await readFile(path.join(sb.backupDir, 'c2', s[1]!, '.sbk-confirmed'), 'utf8'));
      expect(conf.sha256).toBe(await sha(path.join(estore, files[1]!)));

      for (const [idx, set] of s.entries()) {
        const r = await erun(`sbk-restore-remote --gpg-passphrase-file "$KEY" "$HOST" "$ESTORE" c2 --at ${set.split('_')[0]} --as e${idx}`);
        expect(r.exitCode, r.stderr).toBe(0);
        expect(await volumeDiffs(path.join(sb.backupDir, 'c2', set), path.join(sb.lxcDir, `e${idx}`), ['rootfs', 'home'])).toEqual([]);
      }
    });

    it('a wrong passphrase restores nothing; a cut encrypted transfer stores and confirms nothing', async () => {
      const wrong = path.join(sb.dir, 'wrong');
      await writeFile(wrong, 'not the passphrase\n');
      const r = await run('sbk-restore-remote --gpg-passphrase-file "$W" "$HOST" "$ESTORE" c2 --as ewrong', { GNUPGHOME: gnupg, ESTORE: estore, W: wrong });
      expect(r.exitCode).not.toBe(0);
      expect(existsSync(path.join(sb.lxcDir, 'ewrong'))).toBe(false);
      // The store host cannot tell a cut ciphertext from a whole one: the pipeline decides, and
      // links the file to its final name only when every local stage succeeded.
      const before = await ls(estore);
      const confirmedBefore = await confirmedSets('c2');
      await writeFile(path.join(sb.lxcDir, 'c2/home/ubuntu/more'), randomish(400_000, 3));
      const wrapper = path.join(sb.dir, 'cutssh2');
      await writeFile(wrapper, `#!/bin/bash\nhead -c 20000 | ${sshd.sshCommand} "$@"\n`, { mode: 0o755 });
      const cut = await run('sbk-backup-remote --gpg-passphrase-file "$KEY" --keep-snapshots 10 "$HOST" "$ESTORE" c2', {
        GNUPGHOME: gnupg,
        ESTORE: estore,
        KEY: key,
        SBK_SSH: wrapper,
      });
      expect(cut.exitCode).not.toBe(0);
      expect(await ls(estore)).toEqual(before); // neither a final name nor the part file
      expect(await confirmedSets('c2')).toEqual(confirmedBefore);
    });
  });
});

// The remote pipelines with a store directory whose name holds spaces, quotes and a `$`: the
// words reach the remote shell quoted, plain and encrypted, backup and restore.
describe.skipIf(mode === 'skip')('remote pipelines: a store DIR with spaces and quotes', () => {
  let sb: Sandbox;
  let sshd: Sshd;
  let env: Record<string, string> = {};
  const run = (script: string, extra: Record<string, string> = {}) => sh(script, sb, { env: { ...env, ...extra } });
  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 300 });
    sshd = await startSshdFor(sb);
    env = remoteEnv(sshd);
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
