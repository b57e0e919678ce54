// Backups of a container on real BTRFS into a bucket of a real S3 server on 127.0.0.1
// (test/helpers/s3.ts): `sbk-pack -o - | sbk-pack --store s3://…` with the receipts confirmed by
// sbk-snap --confirm, Full then incrementals; every point planned from the bucket and restored
// identical to its snapshots (rsync -naHAXc); a corrupt object fails the restore and leaves
// nothing behind.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { appendFile, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { e2eMode, makeSandbox, makeContainer, randomish, sh, treeDiff, type Sandbox } from '../helpers/sandbox.js';
import { startS3, type S3Server } from '../helpers/s3.js';

const mode = e2eMode();

describe.skipIf(mode === 'skip')('backups in object storage (real BTRFS, real S3 server)', () => {
  let sb: Sandbox;
  let s3: S3Server;
  let url = '';
  let bucket = '';
  const run = (script: string) => sh(script, sb, { env: { ...s3.env, STORE: url } });
  const vols = ['rootfs', 'home', 'var'];
  const points: { name: string; time: number; set: string }[] = [];

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 512 });
    s3 = await startS3();
    bucket = await s3.bucket();
    url = `s3://${bucket}/peer1`;
    await makeContainer(sb, 'c1', { volumes: vols });
  });
  afterAll(async () => {
    await s3?.stop();
    await sb?.cleanup();
  });

  it('backs up Full and incrementals into the bucket; the receipts confirm each set', async () => {
    const c = path.join(sb.lxcDir, 'c1');
    const backup = 'sbk-snap --keep-snapshots 10 c1 | sbk-changelog | sbk-send | sbk-pack -o - | sbk-pack --store "$STORE" | sbk-snap --confirm';
    for (let i = 0; i < 3; i++) {
      if (i === 1) await appendFile(path.join(c, 'var/log/syslog'), 'after the full\n');
      if (i === 2) {
        await rm(path.join(c, 'rootfs/etc/file with spaces.conf'));
        await writeFile(path.join(c, 'home/ubuntu/big'), randomish(3 * 1024 * 1024, 4));
      }
      const r = await run(backup);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stderr).not.toMatch(/Warning|internal error/);
      // --confirm prints where the archive is: its s3:// URL.
      expect(r.stdout.trim()).toMatch(new RegExp(`^${url}/c1_\\d+(_Full)?\\.tar\\.gz$`));
    }
    const sets = (await readdir(path.join(sb.backupDir, 'c1'))).filter((n) => !n.startsWith('.')).sort();
    expect(sets).toHaveLength(3);
    for (const s of sets) {
      const conf = JSON.parse(await readFile(path.join(sb.backupDir, 'c1', s, '.sbk-confirmed'), 'utf8'));
      expect(conf.path).toBe(`${url}/c1_${s}.tar.gz`);
      points.push({ name: `c1_${s}`, time: Number(s.split('_')[0]), set: path.join(sb.backupDir, 'c1', s) });
    }
    expect(sets[0]).toMatch(/_Full$/);
    const keys = await s3.keys(bucket);
    expect(keys.filter((k) => k.endsWith('.tar.gz'))).toEqual(sets.map((s) => `peer1/c1_${s}.tar.gz`));
    expect(keys.filter((k) => k.endsWith('_changelog.txt'))).toHaveLength(3);
    expect((await s3.get(bucket, `peer1/c1_${sets[2]}_changelog.txt`)).toString()).toMatch(/^deleted \/etc\/file with spaces\.conf$/m);
    expect(await s3.uploads(bucket)).toEqual([]);
  });

  it('plans and restores every point from the bucket, identical to its snapshots', async () => {
    for (const [i, p] of points.entries()) {
      const r = await run(`sbk-plan c1 --dir "$STORE" --at ${p.time} | sbk-unpack --as s${i}`);
      expect(r.exitCode, r.stderr).toBe(0);
      for (const v of vols) expect(await treeDiff(path.join(p.set, v), path.join(sb.lxcDir, `s${i}`, v)), `${p.name} ${v}`).toEqual([]);
    }
  });

  it('a corrupt object fails the restore (exit 4) and leaves nothing', async () => {
    const last = points.at(-1)!;
    const key = `peer1/${last.name}.tar.gz`;
    const good = await s3.get(bucket, key);
    const bad = Buffer.from(good);
    bad[Math.floor(bad.length * 0.8)] ^= 0x20;
    await s3.put(bucket, key, bad);
    try {
      const r = await run('sbk-plan c1 --dir "$STORE" | sbk-unpack --as broken');
      expect(r.exitCode, r.stderr).toBe(4);
      expect(existsSync(path.join(sb.lxcDir, 'broken'))).toBe(false);
      expect((await readdir(sb.lxcDir)).filter((n) => n.startsWith('.sbk-restore'))).toEqual([]);
    } finally {
      await s3.put(bucket, key, good);
    }
  });
});
