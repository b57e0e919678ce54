// A chain that mixes compression formats: Full (gzip) → incremental (zstd) → incremental (gzip),
// backed up locally (sbk-pack into the backup dir), through sbk-backup-remote (sbk-pack --store
// on the other end of a real sshd) and through its gpg variant. At every point the chain plans,
// verifies and restores identical to its snapshots; the zstd archive is a standard `.tar.zst`
// (`zstd -t`, `tar --zstd`); the archives' bytes concatenated (gzip and zstd mixed) restore from
// stdin; sbk-snap finds the zstd parent of the next incremental; prune treats both alike.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { appendFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, randomish, sh, treeDiff, type Sandbox } from '../helpers/sandbox.js';
import { remoteEnv, startSshdFor, type Sshd } from '../helpers/sshd.js';

const mode = e2eMode();
const VOLS = ['rootfs', 'home', 'var'];
const CODECS = ['gzip', 'zstd', 'gzip'] as const;
const SUFFIX = { gzip: '.tar.gz', zstd: '.tar.zst' } as const;
/** Three backups and three restores each: minutes on a busy 2-core machine. */
const SLOW = 900_000;
const MAGIC = { gzip: Buffer.from([0x1f, 0x8b]), zstd: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]) } as const;

describe.skipIf(mode === 'skip')('a chain of gzip and zstd archives', () => {
  let sb: Sandbox;
  let sshd: Sshd;
  let env: Record<string, string> = {};
  const run = (script: string, extra: Record<string, string> = {}) => sh(script, sb, { env: { ...env, ...extra } });
  const sets = async (c: string) => (await readdir(path.join(sb.backupDir, c))).filter((n) => !n.startsWith('.')).sort();

  async function volumeDiffs(set: string, restored: string): Promise<string[]> {
    const out: string[] = [];
    for (const v of VOLS) for (const d of await treeDiff(path.join(set, v), path.join(restored, v))) out.push(`${v}: ${d}`);
    return out;
  }

  /** Changes c's content before backup i (each backup has something to carry). */
  async function change(c: string, i: number): Promise<void> {
    const dir = path.join(sb.lxcDir, c);
    await appendFile(path.join(dir, 'var/log/syslog'), `change ${i}\n`);
    await writeFile(path.join(dir, `home/ubuntu/data-${i}`), randomish(300_000 + i * 1000, 10 + i));
  }

  /** Three backups of c, made by `backup(codec)`; returns the snapshot sets, oldest first. */
  async function backUpChain(c: string, backup: (codec: string) => Promise<{ exitCode?: number; stderr: string }>): Promise<string[]> {
    for (const [i, codec] of CODECS.entries()) {
      if (i > 0) await change(c, i);
      const r = await backup(codec);
      expect(r.exitCode, r.stderr).toBe(0);
    }
    const s = await sets(c);
    // One Full, then two incrementals: sbk-snap found the zstd archive of the chain as a parent.
    expect(s.map((n) => n.endsWith('_Full'))).toEqual([true, false, false]);
    return s;
  }

  /** Archive file names of c in dir, oldest first, checked against the codec each was made with. */
  async function archivesIn(dir: string, c: string, s: string[], extra = ''): Promise<string[]> {
    const files = s.map((set, i) => path.join(dir, `${c}_${set}${SUFFIX[CODECS[i]!]}${extra}`));
    for (const f of files) expect(existsSync(f), f).toBe(true);
    return files;
  }

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 768 });
    sshd = await startSshdFor(sb);
    env = { ...remoteEnv(sshd), STORE: path.join(sb.dir, 'remote-store') };
    for (const c of ['m1', 'm2', 'm3']) await makeContainer(sb, c, { volumes: VOLS });
  });
  afterAll(async () => {
    await sshd?.stop();
    await sb?.cleanup();
  });

  it('locally: backs up, plans, verifies and restores every point; mixed bytes on stdin restore; prune takes both', async () => {
    const s = await backUpChain('m1', (codec) => run(`sbk-snap --keep-snapshots 10 m1 | sbk-changelog | sbk-send | sbk-pack --compress ${codec}`));
    const files = await archivesIn(sb.backupDir, 'm1', s);
    for (const [i, f] of files.entries()) {
      expect((await readFile(f)).subarray(0, MAGIC[CODECS[i]!].length).equals(MAGIC[CODECS[i]!])).toBe(true);
      expect(existsSync(f.replace(/\.tar\.(gz|zst)$/, '_changelog.txt'))).toBe(true); // the sidecar, named as ever
    }
    // The zstd archive is a standard one, its manifest first.
    expect((await execa('zstd', ['-q', '-t', files[1]!])).exitCode).toBe(0);
    expect((await execa('tar', ['--zstd', '-tf', files[1]!])).stdout.split('\n')[0]).toBe('manifest.json');

    const list = await run('sbk-plan m1 --list --json');
    expect(list.stdout.trim().split('\n').map((l) => JSON.parse(l).chain)).toEqual(['complete', 'complete', 'complete']);
    for (const [i, set] of s.entries()) {
      const t = set.split('_')[0];
      const plan = await run(`sbk-plan m1 --at ${t}`);
      expect(plan.stdout.trim().split('\n')).toEqual(files.slice(0, i + 1));
      const v = await run(`sbk-plan m1 --at ${t} | sbk-unpack --verify`);
      expect(v.exitCode, v.stderr).toBe(0);
      const r = await run(`sbk-plan m1 --at ${t} | sbk-unpack --as l${i}`);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(await volumeDiffs(path.join(sb.backupDir, 'm1', set), path.join(sb.lxcDir, `l${i}`))).toEqual([]);
    }
    // The archives' bytes, gzip and zstd one after another, on stdin.
    const cat = await run(`cat ${files.join(' ')} | sbk-unpack --as lcat`);
    expect(cat.exitCode, cat.stderr).toBe(0);
    expect(await volumeDiffs(path.join(sb.backupDir, 'm1', s[2]!), path.join(sb.lxcDir, 'lcat'))).toEqual([]);

    // A new Full (zstd): pruning to the last backup removes the old chain, both kinds, sidecars first.
    await change('m1', 9);
    const full = await run('sbk-snap --full --keep-snapshots 10 m1 | sbk-changelog | sbk-send | sbk-pack --compress zstd');
    expect(full.exitCode, full.stderr).toBe(0);
    const prune = await run('sbk-plan m1 --prune --keep-last 1 --delete');
    expect(prune.exitCode, prune.stderr).toBe(0);
    const left = (await readdir(sb.backupDir)).filter((n) => n.startsWith('m1_'));
    expect(left.filter((n) => !n.endsWith('_changelog.txt'))).toEqual([`m1_${(await sets('m1')).at(-1)}.tar.zst`]);
    for (const f of files) expect(existsSync(f)).toBe(false);
  }, SLOW);

  it('through sbk-backup-remote (sbk-pack --store over ssh): stored as sent, restored at every point', async () => {
    const s = await backUpChain('m2', (codec) => run(`sbk-backup-remote --keep-snapshots 10 --compress ${codec} "$HOST" "$STORE" m2`));
    const files = await archivesIn(env.STORE!, 'm2', s);
    // The receipts' sha256 are those of the stored files: the sender's bytes, kept.
    for (const [i, set] of s.entries()) {
      const conf = JSON.parse(await readFile(path.join(sb.backupDir, 'm2', set, '.sbk-confirmed'), 'utf8'));
      expect(conf.path).toBe(files[i]);
    }
    const list = await run('sbk-plan m2 --dir "$STORE" --list --json');
    expect(list.stdout.trim().split('\n').map((l) => JSON.parse(l).chain)).toEqual(['complete', 'complete', 'complete']);
    const v = await run(`sbk-unpack --verify ${files.join(' ')}`);
    expect(v.exitCode, v.stderr).toBe(0);
    for (const [i, set] of s.entries()) {
      const r = await run(`sbk-restore-remote "$HOST" "$STORE" m2 --at ${set.split('_')[0]} --as r${i}`);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(await volumeDiffs(path.join(sb.backupDir, 'm2', set), path.join(sb.lxcDir, `r${i}`))).toEqual([]);
    }
  }, SLOW);

  it('through the gpg pipelines: opaque files named by codec, the chain found and restored at every point', async () => {
    const gnupg = path.join(sb.dir, 'gnupg');
    await mkdir(gnupg, { mode: 0o700 });
    const key = path.join(sb.dir, 'passphrase');
    await writeFile(key, 'correct horse battery staple\n', { mode: 0o600 });
    const extra = { GNUPGHOME: gnupg, KEY: key, ESTORE: path.join(sb.dir, 'encrypted-store') };
    try {
      const s = await backUpChain('m3', (codec) =>
        run(`sbk-backup-remote --gpg-passphrase-file "$KEY" --keep-snapshots 10 --compress ${codec} "$HOST" "$ESTORE" m3`, extra),
      );
      await archivesIn(extra.ESTORE, 'm3', s, '.gpg');
      for (const [i, set] of s.entries()) {
        const r = await run(`sbk-restore-remote --gpg-passphrase-file "$KEY" "$HOST" "$ESTORE" m3 --at ${set.split('_')[0]} --as g${i}`, extra);
        expect(r.exitCode, r.stderr).toBe(0);
        expect(await volumeDiffs(path.join(sb.backupDir, 'm3', set), path.join(sb.lxcDir, `g${i}`))).toEqual([]);
      }
    } finally {
      await execa('gpgconf', ['--homedir', gnupg, '--kill', 'all'], { reject: false });
    }
  }, SLOW);
});
