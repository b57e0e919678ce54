// sbk-pack stopped in the middle of a backup while sbk-send is still sending: the snapshot set
// of the failed backup is removed (btrfs refuses to delete a snapshot a send is reading, so
// sbk-pack must first stop reading and let the upstream send end), and no stray set is left.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readdir, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, randomish, ROOT, type Sandbox } from '../helpers/sandbox.js';
import { until } from '../helpers/wait.js';

const mode = e2eMode();

describe.skipIf(mode === 'skip')('sbk-pack failing while sbk-send still sends', () => {
  let sb: Sandbox;

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 768, name: 'discard' });
    const c = await makeContainer(sb, 'c1');
    // Long enough a send that sbk-pack can be stopped in the middle of it.
    await writeFile(path.join(c, 'opt/payload.bin'), randomish(200 * 1024 * 1024, 4));
  }, 120_000);

  afterAll(async () => {
    await sb?.cleanup();
  });

  it('SIGTERM to sbk-pack: the failed backup\'s snapshot set is removed', async () => {
    const run = execa('bash', ['-c', 'sbk-snap --full c1 | sbk-send | sbk-pack & echo $!; wait $!'], {
      reject: false,
      stdin: 'ignore',
      env: { ...process.env, PATH: `${path.join(ROOT, 'bin')}:${process.env.PATH}`, ...sb.env },
    });
    // sbk-pack's pid ($! is the last stage of the background pipeline).
    const pid = await new Promise<number>((resolve) => run.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim()))));
    // Stop it once a megabyte of the archive is written: deep inside the big volume's send.
    const archiveWritten = async () => {
      const temp = (await readdir(sb.backupDir).catch(() => [] as string[])).find((n) => n.includes('.tmp-'));
      return !!temp && ((await stat(path.join(sb.backupDir, temp)).catch(() => undefined))?.size ?? 0) > 1024 * 1024;
    };
    await until(archiveWritten, 'a megabyte of the archive', 30_000);
    process.kill(pid, 'SIGTERM');
    const r = await run;
    expect(r.stderr).not.toMatch(/could not remove/);
    expect(r.stderr).toMatch(/removed the snapshots of the failed backup/);
    expect(await readdir(path.join(sb.backupDir, 'c1'))).toEqual([]);
    expect((await readdir(sb.backupDir)).filter((n) => n.endsWith('.tar.gz') || n.includes('.tmp-'))).toEqual([]);
  });
});
