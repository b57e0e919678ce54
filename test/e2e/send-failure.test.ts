// sbk-send's failures. A volume's `btrfs send` that fails part way through a backup, through a
// `btrfs` on PATH that runs the real one for everything else: the failure is reported with
// btrfs's message, the archive has no trailer (so sbk-pack refuses it), and no send is left
// running. A system error that is not sbk's own is reported once, by the error itself: passing
// it on to stdout must not make it appear a second time as an error of stdout.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { readFile, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { e2eMode, makeSandbox, makeContainer, randomish, sh, snapToFile, type Sandbox } from '../helpers/sandbox.js';
import { fakeBtrfs, withBin } from '../helpers/fake-btrfs.js';
import { alive } from '../helpers/wait.js';

const mode = e2eMode();

/** A `btrfs` that fails `send` of one volume's snapshot (after `delayMs`) and records its pid. */
async function faultyBtrfs(dir: string, volume: string, opts: { delayMs?: number; pidFile: string }): Promise<string> {
  return fakeBtrfs(dir, () => [
    `if [ "$1" = send ]; then echo $$ >> ${opts.pidFile}; fi`,
    `if [ "$1" = send ] && [[ "\${@: -1}" == */${volume} ]]; then`,
    `  sleep ${(opts.delayMs ?? 0) / 1000}`,
    `  echo "ERROR: simulated failure sending ${volume}" >&2; exit 1`,
    'fi',
  ]);
}

describe.skipIf(mode === 'skip')('sbk-send when a volume\'s send fails', () => {
  let sb: Sandbox;
  let record = '';

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 512, name: 'sendfail' });
    const c = await makeContainer(sb, 'c1');
    await writeFile(path.join(c, 'rootfs/payload.bin'), randomish(24 * 1024 * 1024, 9));
    record = await snapToFile(sb, 'c1');
  }, 120_000);

  afterAll(async () => {
    await sb?.cleanup();
  });

  it('streams every volume in order, each once, and the archive verifies', async () => {
    const r = await sh(`sbk-send < ${record} | tar -t`, sb);
    expect(r.exitCode, r.stderr).toBe(0);
    const deltas = r.stdout.split('\n').filter((n) => /\.delta/.test(n)).map((n) => n.replace(/\.delta.*/, ''));
    expect([...new Set(deltas)]).toEqual(['rootfs', 'home', 'opt', 'var']);
    const v = await sh(`sbk-send < ${record} | sbk-pack -o - | sbk-unpack --verify`, sb);
    expect(v.exitCode, v.stderr).toBe(0);
  }, 120_000);

  it('a later volume whose send fails is reported with btrfs\'s message; the archive has no trailer', async () => {
    const pids = path.join(sb.dir, 'pids-early');
    const bin = await faultyBtrfs(path.join(sb.dir, 'bin-early'), 'opt', { pidFile: pids });
    const r = await sh(`sbk-send < ${record} > ${sb.dir}/early.tar`, sb, withBin(bin));
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/simulated failure sending opt/);
    expect(r.stderr.match(/simulated failure/g)).toHaveLength(1); // reported once
    expect(r.stderr).not.toMatch(/at .*\.m?js:\d+/); // a user-facing error, no stack trace
    // rootfs and home went out whole before opt's turn; nothing after opt, and no trailer.
    const t = await sh(`tar -tf ${sb.dir}/early.tar`, sb);
    expect(t.stdout).toMatch(/rootfs\.delta/);
    expect(t.stdout).not.toMatch(/var\.delta/);
    expect(t.stdout).not.toMatch(/trailer\.json/);
    const p = await sh(`sbk-pack -o - < ${sb.dir}/early.tar > /dev/null`, sb);
    expect(p.exitCode).not.toBe(0);
  }, 120_000);

  it('a send that fails after a while: non-zero exit, and no btrfs send is left running', async () => {
    const pids = path.join(sb.dir, 'pids-stop');
    const bin = await faultyBtrfs(path.join(sb.dir, 'bin-stop'), 'home', { delayMs: 300, pidFile: pids });
    const r = await sh(`sbk-send < ${record} > /dev/null`, sb, withBin(bin));
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/simulated failure sending home/);
    const started = (await readFile(pids, 'utf8')).split('\n').filter(Boolean).map(Number);
    expect(started.length).toBe(2); // rootfs, then home; nothing after the failure
    expect(started.filter(alive)).toEqual([]);
  }, 120_000);
});

describe.skipIf(mode === 'skip')('sbk-send reports a system error once', () => {
  let sb: Sandbox;
  let records = '';

  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'senderr' });
    await makeContainer(sb, 'c1');
    records = await snapToFile(sb, 'c1');
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
