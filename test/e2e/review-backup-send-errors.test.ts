// sbk-send errors that are not sbk's own (a system error while the archive is being written)
// are reported once, by the error itself: the pipeline that passes them on to stdout must not
// make them appear a second time as an error of stdout.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { e2eMode, makeSandbox, makeContainer, sh, type Sandbox } from '../helpers/sandbox.js';

const mode = e2eMode();

describe.skipIf(mode === 'skip')('sbk-send reports a system error once', () => {
  let sb: Sandbox;
  let records = '';

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'senderr' });
    await makeContainer(sb, 'c1');
    const r = await sh('sbk-snap c1', sb);
    expect(r.exitCode, r.stderr).toBe(0);
    records = path.join(sb.dir, 'rec.ndjson');
    await writeFile(records, r.stdout);
  }, 120_000);

  afterAll(async () => {
    await sb?.cleanup();
  });

  it('the container directory went away after the snapshots were taken', async () => {
    const c = path.join(sb.lxcDir, 'c1');
    await rename(c, `${c}.moved`);
    try {
      for (const out of ['> /dev/null', '| cat > /dev/null']) {
        const r = await sh(`sbk-send < ${records} ${out}`, sb);
        expect(r.exitCode).toBe(5);
        const lines = r.stderr.split('\n').filter(Boolean);
        expect(lines, r.stderr).toEqual([`sbk-send: ${c}: no such file or directory`]);
      }
    } finally {
      await rename(`${c}.moved`, c);
    }
  });
});
