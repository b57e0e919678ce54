// Benchmark (not a test) of the user-space replay: a chain (a Full of content copied from this
// machine's /usr, then an incremental that changes part of it) restored side by side by
// `sbk-unpack --to DIR` (the replay) and by `sbk-unpack` (btrfs receive), alternating, medians
// of wall time and peak RSS; then the memory a replay needs per file: a Full of N files (a tenth
// of them symlinks) and an incremental adding N/5 more, replayed with the peak RSS measured.
// Needs root; uses a loop-mounted BTRFS image (unmounted and deleted at the end, also on failure).
// Usage: node bench/replay.mjs [--quick] [--rounds N] [--files N] [--files-only]   (after `npm run build`)
//        prints one JSON line; bench/run.js --only h runs it and puts it in RESULTS.md
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, symlinkSync, rmSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const argv = process.argv.slice(2);
const value = (f, d) => (argv.includes(f) ? argv[argv.indexOf(f) + 1] : d);
const QUICK = argv.includes('--quick');
const ROUNDS = Number(value('--rounds', QUICK ? 2 : 3));
const FILES = Number(value('--files', QUICK ? 50000 : 500000));
const FILES_ONLY = argv.includes('--files-only');
const MiB = 1024 * 1024;

const sh = (cmd, ...args) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 * MiB }).toString();
const bash = (script, env = {}) => {
  const r = spawnSync('bash', ['-o', 'pipefail', '-c', script], { env: { ...process.env, PATH: `${ROOT}/bin:${process.env.PATH}`, ...env }, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${script}: exit ${r.status}\n${r.stderr}`);
  return r;
};
const log = (m) => process.stderr.write(`[replay bench ${new Date().toISOString().slice(11, 19)}] ${m}\n`);

/** Runs a command under /usr/bin/time: wall seconds and peak RSS (MiB). */
function timed(script, env) {
  const t0 = performance.now();
  const r = bash(`/usr/bin/time -f 'RSS %M' ${script}`, env);
  const wall = (performance.now() - t0) / 1000;
  const rss = Number(/RSS (\d+)/.exec(r.stderr)?.[1] ?? NaN) / 1024;
  return { wall, rss };
}
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

const dir = mkdtempSync(path.join(os.tmpdir(), 'sbk-bench-replay-'));
const img = path.join(dir, 'img');
const mnt = path.join(dir, 'mnt');
mkdirSync(mnt);
let mounted = false;
const cleanup = () => {
  if (mounted) spawnSync('umount', [mnt]);
  mounted = false;
  rmSync(dir, { recursive: true, force: true });
};
process.on('SIGINT', () => {
  cleanup();
  process.exit(130);
});

try {
  sh('truncate', '-s', QUICK ? '6G' : '16G', img);
  sh('mkfs.btrfs', '-q', '-f', img);
  sh('mount', '-o', 'loop', img, mnt);
  mounted = true;
  const lxcDir = path.join(mnt, 'lxc');
  sh('btrfs', '-q', 'subvolume', 'create', lxcDir);
  const env = { SBK_LXC_DIR: lxcDir, SBK_BACKUP_DIR: path.join(lxcDir, 'backups') };
  const backup = () => bash('sbk-snap --keep-snapshots 100 c | sbk-changelog | sbk-send | sbk-pack -q', env).stdout.trim();
  const container = (name, fill) => {
    const c = path.join(lxcDir, name);
    mkdirSync(c);
    sh('btrfs', '-q', 'subvolume', 'create', path.join(c, 'rootfs'));
    writeFileSync(path.join(c, 'config'), `lxc.rootfs.path = btrfs:${c}/rootfs\nlxc.uts.name = ${name}\n`);
    fill(path.join(c, 'rootfs'));
    return c;
  };

  // (1) The chain: /usr content, then an incremental changing a part of it.
  log('making the chain');
  container('c', (r) => {
    if (FILES_ONLY) return void writeFileSync(path.join(r, 'one'), 'one\n');
    sh('cp', '-a', '/usr/lib/x86_64-linux-gnu', path.join(r, 'lib'));
    if (!QUICK) sh('cp', '-a', '/usr/share/doc', path.join(r, 'doc'));
  });
  const chain = [backup()];
  if (!FILES_ONLY) bash(`cd ${lxcDir}/c/rootfs && cp -a lib lib2 && rm -rf lib/perl* && find lib -name '*.so*' -size +1M | head -20 | while read f; do dd if=/dev/urandom of="$f" bs=4k count=4 seek=3 conv=notrunc status=none; done`);
  if (!FILES_ONLY) chain.push(backup());
  const archives = chain.map((a) => `'${a}'`).join(' ');
  const runs = { replay: [], receive: [] };
  for (let i = 0; i < (FILES_ONLY ? 0 : ROUNDS); i++) {
    for (const k of i % 2 ? ['receive', 'replay'] : ['replay', 'receive']) {
      sh('sync');
      const to = path.join(mnt, `to${i}`);
      log(`${k} round ${i + 1}`);
      runs[k].push(k === 'replay' ? timed(`sbk-unpack -q --to '${to}' ${archives}`, env) : timed(`sbk-unpack -q --as r${i} ${archives}`, env));
      bash(k === 'replay' ? `rm -rf '${to}'` : `for v in ${lxcDir}/r${i}/rootfs; do btrfs -q subvolume delete "$v"; done; rm -rf ${lxcDir}/r${i}`);
    }
  }
  const chainResult = FILES_ONLY ? {} : Object.fromEntries(Object.entries(runs).map(([k, rs]) => [k, { wallS: +median(rs.map((r) => r.wall)).toFixed(2), peakRssMiB: Math.round(Math.max(...rs.map((r) => r.rss))) }]));
  if (!FILES_ONLY) chainResult.ratio = +(chainResult.replay.wallS / chainResult.receive.wallS).toFixed(2);
  if (!FILES_ONLY) chainResult.bytes = Number(sh('du', '-cb', ...chain).split('\n').at(-2).split('\t')[0]);

  // (2) Memory per file: N files, then N/5 more in an incremental.
  log(`making ${FILES} files`);
  const c2 = container('m', (r) => {
    for (let i = 0; i < FILES; i++) {
      const d = path.join(r, `d${Math.floor(i / 1000)}`);
      if (i % 1000 === 0) mkdirSync(d);
      if (i % 10 === 9) symlinkSync(`f${i - 1}`, path.join(d, `l${i}`));
      else writeFileSync(path.join(d, `f${i}`), `${i}\n`);
    }
  });
  // Without sbk-changelog: its first Full of 500,000 paths overflows its stack (RangeError in
  // recordChangelog), a bug of that stage, not of what is measured here.
  const backupM = () => bash('sbk-snap --keep-snapshots 100 m | sbk-send | sbk-pack -q', env).stdout.trim();
  const m = [backupM()];
  for (let i = 0; i < FILES / 5; i++) {
    const d = path.join(c2, 'rootfs', `n${Math.floor(i / 1000)}`);
    if (i % 1000 === 0) mkdirSync(d);
    writeFileSync(path.join(d, `g${i}`), `${i}\n`);
  }
  m.push(backupM());
  log('replaying them');
  container('z', (r) => writeFileSync(path.join(r, 'one'), 'one\n'));
  const tiny = bash('sbk-snap z | sbk-changelog | sbk-send | sbk-pack -q', env).stdout.trim();
  const small = timed(`sbk-unpack -q --to '${mnt}/small' '${tiny}'`, env); // the baseline: one file
  const full = timed(`sbk-unpack -q --to '${mnt}/m0' '${m[0]}'`, env);
  const both = timed(`sbk-unpack -q --to '${mnt}/m1' '${m[0]}' '${m[1]}'`, env);
  const files = {
    files: FILES,
    fullWallS: +full.wall.toFixed(1),
    fullPeakRssMiB: Math.round(full.rss),
    withIncrementalWallS: +both.wall.toFixed(1),
    withIncrementalPeakRssMiB: Math.round(both.rss),
    baselinePeakRssMiB: Math.round(small.rss),
    bytesPerFile: Math.max(0, Math.round(((Math.max(full.rss, both.rss) - small.rss) * MiB) / (FILES * 1.2))),
  };
  if (readdirSync(path.join(mnt, 'm1', 'rootfs')).length !== FILES / 1000 + Math.ceil(FILES / 5 / 1000)) throw new Error('the replayed tree has not every directory');
  console.log(JSON.stringify({ bench: 'replay', quick: QUICK, rounds: ROUNDS, chain: chainResult, perFile: files, date: new Date().toISOString(), node: process.version }));
} finally {
  cleanup();
}
