// Outputs that fill up (a tmpfs far smaller than what is written): sbk-pack storing into a
// directory while the changelog sidecar is written, sbk-send writing its tar into a file. The
// error is reported once, as a full disk, with no stack trace and no unhandled 'error' event,
// and no temporary file is left behind.
import { describe, it, expect, beforeAll, afterAll, beforeEach } from 'vitest';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { e2eMode, makeSandbox, makeContainer, randomish, sh, snapToFile, unmount, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();

describe.skipIf(mode === 'skip')('outputs on a full disk (a 256 KiB tmpfs)', () => {
  let sb: Sandbox;
  let tiny = '';
  let records = '';
  let withChangelog = '';

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'enospc' });
    await makeContainer(sb, 'c1');
    tiny = path.join(sb.dir, 'tiny');
    await mkdir(tiny);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', tiny]);
    records = await snapToFile(sb, 'c1');
    // A changelog of 2.7 MB: its sidecar cannot fit, while the compressor still holds the archive.
    const rec = JSON.parse(await readFile(records, 'utf8'));
    rec.changelog = path.join(sb.dir, 'changelog.txt');
    await writeFile(rec.changelog, randomish(2 * 1024 * 1024, 3).toString('base64'));
    withChangelog = path.join(sb.dir, 'rec-changelog.ndjson');
    await writeFile(withChangelog, JSON.stringify(rec) + '\n');
  }, 120_000);

  afterAll(async () => {
    if (tiny) await unmount(tiny);
    await sb?.cleanup();
  });

  beforeEach(async () => {
    for (const n of await readdir(tiny)) await rm(path.join(tiny, n), { force: true });
  });

  describe('sbk-pack --store when the disk fills up in the changelog', () => {
    const expectCleanFailure = async (r: { exitCode?: number; stderr: string }) => {
      expect(r.exitCode).toBe(1);
      expect(r.stderr).toMatch(/sbk-pack: no space left on device/);
      expect(r.stderr).not.toMatch(/Unhandled 'error' event|at .*\.m?js:\d+/);
      expect(await readdir(tiny)).toEqual([]); // no temporary file left
    };

    it('from the tar stream of sbk-send', async () => {
      const r = await sh(`sbk-send < ${withChangelog} | sbk-pack --store ${tiny}`, sb);
      await expectCleanFailure(r);
    });

    it('from the gzip stream of sbk-pack -o -', async () => {
      const r = await sh(`sbk-send < ${withChangelog} | sbk-pack -o - | sbk-pack --store ${tiny}`, sb);
      await expectCleanFailure(r);
    });
  });

  it('sbk-send writing to a full disk: exit 1, "no space left on device" once, no internal error', async () => {
    const r = await sh(`sbk-send < ${records} > ${tiny}/out.tar`, sb);
    expect(r.stderr.split('\n').filter(Boolean)).toEqual(['sbk-send: no space left on device']);
    expect(r.exitCode).toBe(1);
  });
});
