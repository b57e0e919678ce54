// sbk-snap --confirm: a receipt that lists volumes must list every volume of the set, each with
// its snapshot's UUID. An empty or partial list must not confirm a set whose other snapshots
// were never checked against the stored archive.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { e2eMode, makeSandbox, makeContainer, sh, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();

describe.skipIf(mode === 'skip')('receipts naming only some volumes of a set', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await makeSandbox();
    await makeContainer(sb, 'c1', { volumes: ['rootfs', 'home'] });
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  it('an empty or partial volumes list confirms nothing; the full list confirms', async () => {
    const snap = await sh('sbk-snap c1', sb);
    expect(snap.exitCode, snap.stderr).toBe(0);
    const rec = JSON.parse(snap.stdout) as { name: string; time: number; full: boolean; set: string; volumes: { name: string; uuid: string }[] };
    const receipt = (volumes: { name: string; uuid: string }[]) =>
      JSON.stringify({ sbk: 'receipt', format: 1, name: rec.name, container: 'c1', time: rec.time, full: rec.full, volumes }) + '\n';
    const marker = path.join(rec.set, '.sbk-confirmed');
    const all = rec.volumes.map((v) => ({ name: v.name, uuid: v.uuid }));

    const empty = await sh('sbk-snap --confirm', sb, { input: receipt([]) });
    expect(empty.exitCode, empty.stderr).toBe(4);
    expect(empty.stderr).toMatch(/does not match the snapshot set/);
    expect(existsSync(marker)).toBe(false);

    const partial = await sh('sbk-snap --confirm', sb, { input: receipt(all.filter((v) => v.name === 'rootfs')) });
    expect(partial.exitCode, partial.stderr).toBe(4);
    expect(partial.stderr).toMatch(/home/);
    expect(existsSync(marker)).toBe(false);

    const ok = await sh('sbk-snap --confirm', sb, { input: receipt(all) });
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(existsSync(marker)).toBe(true);
  });
});

describe.skipIf(mode === 'skip')('receipts made here for a store that runs no sbk (--record-name, --receipt)', () => {
  let sb: Sandbox;
  beforeAll(async () => {
    sb = await makeSandbox();
    await makeContainer(sb, 'c2', { volumes: ['rootfs', 'home'] });
  });
  afterAll(async () => {
    await sb?.cleanup();
  });

  it('names each record, and makes a receipt that sbk-snap --confirm accepts', async () => {
    const snap = await sh('sbk-snap c2', sb);
    expect(snap.exitCode, snap.stderr).toBe(0);
    const rec = JSON.parse(snap.stdout) as { name: string; set: string; volumes: { name: string; uuid: string }[] };
    const name = await sh('sbk-snap --record-name', sb, { input: snap.stdout });
    expect(name.exitCode, name.stderr).toBe(0);
    expect(name.stdout.trim().split("\n")).toEqual([rec.name]);

    const sum = 'a'.repeat(64);
    const receipt = await sh(`sbk-snap --receipt --host store1 --path /srv/b/${rec.name}.tar.gz.gpg --size 123 --sha256 ${sum}`, sb, { input: snap.stdout });
    expect(receipt.exitCode, receipt.stderr).toBe(0);
    const r = JSON.parse(receipt.stdout);
    expect(r).toMatchObject({ sbk: 'receipt', name: rec.name, host: 'store1', path: `/srv/b/${rec.name}.tar.gz.gpg`, archive: `${rec.name}.tar.gz.gpg`, size: 123, sha256: sum });
    expect(r.volumes).toEqual(rec.volumes.map((v) => ({ name: v.name, uuid: v.uuid })));

    const ok = await sh('sbk-snap --confirm', sb, { input: receipt.stdout });
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(existsSync(path.join(rec.set, '.sbk-confirmed'))).toBe(true);
  });

  it('a receipt without a whole description of the stored file, or no records at all, is refused', async () => {
    const bad = await sh('sbk-snap --receipt --host h --path /x --size 1 --sha256 xyz', sb, { input: '' });
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/--sha256, 64 hex digits/);
    const rel = await sh(`sbk-snap --receipt --host h --path x --size 1 --sha256 ${'0'.repeat(64)}`, sb, { input: '' });
    expect(rel.exitCode).toBe(2);
    const none = await sh('sbk-snap --record-name', sb, { input: '' });
    expect(none.exitCode).toBe(3);
    expect(none.stderr).toMatch(/no input/);
  });
});
