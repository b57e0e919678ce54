#!/usr/bin/env node
// How long sbk-snap keeps a running container frozen per backup (bench/run.js section (h); alone:
// `node bench/freeze.mjs [ROUNDS]`, as root, after `npm run build`). A real busybox LXC container
// with the Subutai layout (rootfs, home, opt, var subvolumes) on a loop-mounted BTRFS image runs
// two writers: the counter pair of the consistency test (/var then /opt, as fast as busybox goes)
// and a loop rewriting an 8 MiB file in /var, so that every snapshot has dirty data to flush.
// ROUNDS backups (sbk-snap -v; each set removed after) give the frozenMs of their records: the
// last stdout line is JSON {bench, rounds, medianMs, maxMs, minMs, markdown}. Everything it
// makes is removed at the end, on failure and on SIGINT/SIGTERM.
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { appendFile, mkdir, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const ROUNDS = Math.max(3, Number(process.argv[2] ?? 20));
const log = (m) => process.stderr.write(`[bench freeze ${new Date().toISOString().slice(11, 19)}] ${m}\n`);

const run = (cmd, args, opts = {}) =>
  new Promise((resolve, reject) =>
    execFile(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 24, ...opts }, (err, stdout, stderr) =>
      err && !opts.allowFail ? reject(new Error(`${cmd} ${args.join(' ')}: ${stderr || err.message}`)) : resolve({ stdout, stderr, code: err ? err.code : 0 }),
    ),
  );

const dir = mkdtempSync(path.join(os.tmpdir(), 'sbk-bench-freeze-'));
const mnt = path.join(dir, 'mnt');
const lxcDir = path.join(mnt, 'lxc');
const backupDir = path.join(mnt, 'backups');
const cdir = path.join(lxcDir, 'bench1');
const env = { ...process.env, SBK_LXC_DIR: lxcDir, SBK_BACKUP_DIR: backupDir };
let mounted = false;
let created = false;
let writers = [];

async function cleanup() {
  for (const w of writers) w.kill('SIGKILL');
  if (created) {
    await run('lxc-stop', ['-P', lxcDir, '-n', 'bench1', '-k'], { allowFail: true });
    for (const v of ['home', 'opt', 'var']) await run('btrfs', ['subvolume', 'delete', path.join(cdir, v)], { allowFail: true });
    await run('lxc-destroy', ['-P', lxcDir, '-n', 'bench1'], { allowFail: true });
  }
  if (mounted) {
    for (let i = 0; i < 20 && (await run('umount', [mnt], { allowFail: true })).code !== 0; i++) await new Promise((r) => setTimeout(r, 250));
  }
  rmSync(dir, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => void cleanup().finally(() => process.exit(130)));

async function setUp() {
  await mkdir(mnt);
  await run('truncate', ['-s', '1G', path.join(dir, 'btrfs.img')]);
  await run('mkfs.btrfs', ['-q', '-f', path.join(dir, 'btrfs.img')]);
  await run('mount', ['-o', 'loop', path.join(dir, 'btrfs.img'), mnt]);
  mounted = true;
  await mkdir(lxcDir);
  created = true;
  await run('lxc-create', ['-P', lxcDir, '-t', 'busybox', '-n', 'bench1', '-B', 'btrfs']);
  for (const v of ['home', 'opt', 'var']) {
    await run('btrfs', ['subvolume', 'create', path.join(cdir, v)]);
    await mkdir(path.join(cdir, 'rootfs', v), { recursive: true });
  }
  // As test/helpers/lxc.ts: no network, unconfined, the volumes bound in.
  const kept = (await readFile(path.join(cdir, 'config'), 'utf8')).split('\n').filter((l) => !/^\s*lxc\.(net|network|apparmor)\./.test(l));
  const added = [...['home', 'opt', 'var'].map((v) => `lxc.mount.entry = ${cdir}/${v} ${v} none bind,rw 0 0`), 'lxc.net.0.type = empty', 'lxc.apparmor.profile = unconfined'];
  await writeFile(path.join(cdir, 'config'), `${kept.join('\n').trimEnd()}\n${added.join('\n')}\n`);
  await run('lxc-start', ['-P', lxcDir, '-n', 'bench1']);
  await run('lxc-wait', ['-P', lxcDir, '-n', 'bench1', '-s', 'RUNNING', '-t', '60']);
  const inside = (script) => spawn('lxc-attach', ['-P', lxcDir, '-n', 'bench1', '--', 'sh', '-c', script], { stdio: 'ignore' });
  writers = [
    inside('i=0; while :; do i=$((i+1)); echo $i > /var/.pair; mv /var/.pair /var/pair; echo $i > /opt/.pair; mv /opt/.pair /opt/pair; done'),
    inside('while :; do dd if=/dev/urandom of=/var/blob bs=1M count=8 2>/dev/null; done'),
  ];
  while (!existsSync(path.join(cdir, 'var', 'blob'))) await new Promise((r) => setTimeout(r, 50));
}

const median = (a) => {
  const s = [...a].sort((x, y) => x - y);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

async function main() {
  await setUp();
  log(`bench1 runs with two writers; ${ROUNDS} backups`);
  const frozen = [];
  for (let i = 0; i < ROUNDS; i++) {
    const r = await run(path.join(ROOT, 'bin', 'sbk-snap'), ['-v', 'bench1'], { env });
    const rec = JSON.parse(r.stdout.trim().split('\n')[0]);
    if (rec.consistency !== 'frozen' || !Number.isSafeInteger(rec.frozenMs)) throw new Error(`backup ${i} was not frozen: ${r.stdout}`);
    frozen.push(rec.frozenMs);
    for (const v of rec.volumes) await run('btrfs', ['subvolume', 'delete', v.snapshot]);
    rmSync(rec.set, { recursive: true, force: true });
  }
  const result = { bench: 'freeze', rounds: ROUNDS, medianMs: median(frozen), maxMs: Math.max(...frozen), minMs: Math.min(...frozen) };
  result.markdown = [
    '## (h) Time frozen per backup (bench/freeze.mjs)',
    '',
    `A running busybox LXC container (rootfs, home, opt, var subvolumes) with two writers inside (a counter renamed into /var and /opt, an 8 MiB file rewritten in /var), ${ROUNDS} backups (\`sbk-snap\`: flush, freeze, four snapshots, thaw): the \`frozenMs\` of their records.`,
    '',
    '| median ms | max ms | min ms |',
    '| ---: | ---: | ---: |',
    `| ${result.medianMs} | ${result.maxMs} | ${result.minMs} |`,
    '',
  ];
  log(`frozen per backup: median ${result.medianMs} ms, max ${result.maxMs} ms, min ${result.minMs} ms`);
  process.stdout.write(JSON.stringify(result) + '\n');
}

try {
  await main();
} catch (err) {
  process.exitCode = 1;
  log(`failed: ${err?.stack ?? err}`);
} finally {
  await cleanup();
}
