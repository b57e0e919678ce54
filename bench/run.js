#!/usr/bin/env node
// The sbk benchmark (`npm run bench`, as root; not part of the test run). Builds a loop-mounted
// BTRFS sandbox with a realistic container (files copied from this machine's /usr), then runs
// each comparison side by side against the standard tools, alternating, several rounds, and
// writes medians, ratios, sizes and the peak RSS of every stage to bench/RESULTS.md:
//   (a) sbk-pack vs gzip -6 vs pigz -6 -p2 on the same sbk-send stream
//   (b) backup  sbk-snap | sbk-send | sbk-pack   vs  btrfs send | pigz -6 -p2 > file
//   (c) restore sbk-plan | sbk-unpack            vs  gzip -dc | btrfs receive
//   (d) peak RSS of every stage on a delta of more than 2 GiB
//   (e) --help time of every binary
//   (f) the cost of --progress (drawn on a pseudo-terminal)
//   (g) the changelog bench (bench/changelog.mjs)
//   (h) the time a running LXC container is frozen per backup (bench/freeze.mjs)
//   (r) the replay bench (bench/replay.mjs): sbk-unpack --to vs btrfs receive, memory per file
//   (i) the fixed cost of a backup: a no-change incremental and every --help, beside node -e 0
//       (bench/fixed-cost.mjs, which also runs alone)
//   (s) object storage: upload and restore-read throughput of s3:// against a directory (bench/s3.mjs)
//   (z) zstd archives against zstd, gzip and a bare btrfs send (bench/zstd.mjs, its own sandbox)
// Usage: node bench/run.js [--quick] [--rounds N] [--only a,b,c,d,e,f,g,h,i,r,s,z] [--profile] [--keep]
//        node bench/run.js --profile --only none     (the profiles alone, RESULTS.md untouched)
//        node bench/run.js --report-only             (RESULTS.md again from bench/results.json)
//   --quick     about 270 MiB of content and a 0.5 GiB "big" delta instead of 0.9 and 2.2 GiB
//   --profile   also run sbk-send, sbk-pack and sbk-unpack under `node --cpu-prof` and write the
//               heaviest functions of each to bench/PROFILE.md
//   --keep      leave the sandbox mounted at the end (for poking around); unmount it by hand
// The image is unmounted and deleted at the end, on failure and on SIGINT/SIGTERM.
import { spawn, execFileSync } from 'node:child_process';
import { createReadStream, existsSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import {
  mkdir, readdir, lstat, readlink, symlink, copyFile, writeFile, appendFile, rename, rm, stat, readFile, open,
} from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SOURCES, VOLUMES, budget, copyBudget } from './content.mjs';
import { sectionFixedCost, fixedCostReport } from './fixed-cost.mjs';
import { benchObjectStorage, objectStorageReport } from './s3.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = (n) => path.join(ROOT, 'bin', n);
const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

// ---- options ---------------------------------------------------------------------------------
const argv = process.argv.slice(2);
const flag = (f) => argv.includes(f);
const value = (f) => {
  const i = argv.indexOf(f);
  return i >= 0 ? argv[i + 1] : undefined;
};
if (flag('--help') || flag('-h')) {
  const lines = readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1);
  const header = lines.slice(0, lines.findIndex((l) => !l.startsWith('//')));
  process.stdout.write(header.map((l) => l.replace(/^\/\/ ?/, '')).join('\n') + '\n');
  process.exit(0);
}
const QUICK = flag('--quick');
const ROUNDS = Math.max(1, Number(value('--rounds') ?? 3));
const ONLY = new Set((value('--only') ?? 'a,b,c,d,e,f,g,h,i,r,s,z').split(','));
const PROFILE = flag('--profile');
const KEEP = flag('--keep');
const HELP_RUNS = 10;
const F_ROUNDS = Math.max(ROUNDS, 4); // progress costs less than the noise of one pair: more pairs

const BUDGET = budget(QUICK);

// ---- process handling ------------------------------------------------------------------------
const children = new Set();
let cleanupSteps = [];
let cleaningUp = false;

function log(msg) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/**
 * Runs a bash script (pipefail). Resolves with {code, stdout, stderr, ms}; rejects on a non-zero
 * exit unless `allowFail`. Each script runs in its own process group so that an interrupted bench
 * can stop exactly the processes it started.
 */
function sh(script, opts = {}) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn('bash', ['-o', 'pipefail', '-c', script], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...ENV, ...(opts.env ?? {}) },
      cwd: opts.cwd ?? ROOT,
    });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => {
      if (stdout.length < 1e6) stdout += c;
    });
    child.stderr.on('data', (c) => {
      if (stderr.length < 1e6) stderr += c;
    });
    child.on('error', reject);
    child.on('close', (code, sig) => {
      children.delete(child);
      const r = { code: code ?? 128, stdout, stderr, ms: performance.now() - t0 };
      if ((code !== 0 || sig) && !opts.allowFail)
        reject(new Error(`command failed (${sig ?? `exit ${code}`}): ${script}\n${stderr.slice(-3000)}`));
      else resolve(r);
    });
  });
}

const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;

let ENV = {};

function killChildren() {
  for (const c of children) {
    try {
      process.kill(-c.pid, 'SIGKILL'); // the process group this bench created for the script
    } catch {
      /* gone */
    }
  }
}

async function cleanup() {
  if (cleaningUp) return;
  cleaningUp = true;
  killChildren();
  for (const step of cleanupSteps.reverse()) {
    try {
      await step();
    } catch (err) {
      log(`cleanup: ${err.message}`);
    }
  }
  cleanupSteps = [];
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    log(`${sig}: cleaning up`);
    cleanup().finally(() => process.exit(130));
  });
}

// ---- measuring -------------------------------------------------------------------------------
const TIME = '/usr/bin/time';
let timeSeq = 0;
let TIMEDIR = '';

/** A pipeline stage run under /usr/bin/time: wall, user, sys seconds and peak RSS (KiB). */
function T(name, cmd) {
  const f = path.join(TIMEDIR, `${++timeSeq}-${name.replace(/[^a-z0-9_-]/gi, '_')}.time`);
  return { name, file: f, text: `${TIME} -f '%e %U %S %M' -o ${q(f)} ${cmd}` };
}

function readTime(stage) {
  const parts = readFileSync(stage.file, 'utf8').trim().split('\n').pop().trim().split(/\s+/).map(Number);
  return { wall: parts[0], user: parts[1], sys: parts[2], rssKiB: parts[3] };
}

/** Runs `stages` joined by pipes (plus optional shell text before/after); times the whole. */
async function pipeline(stages, opts = {}) {
  const script = (opts.before ? opts.before + '; ' : '') + stages.map((s) => s.text).join(' | ') + (opts.after ? '; ' + opts.after : '');
  const r = await sh(script, opts);
  const per = {};
  for (const s of stages) per[s.name] = readTime(s);
  return { wall: r.ms / 1000, stages: per, stderr: r.stderr, stdout: r.stdout };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? NaN : n % 2 ? s[n >> 1] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const fmtS = (s) => (s >= 100 ? s.toFixed(0) : s >= 10 ? s.toFixed(1) : s.toFixed(2));
const fmtMiB = (b) => (b / MiB).toFixed(b >= 100 * MiB ? 0 : 1);
const fmtRatio = (r) => r.toFixed(3);
const loadavg = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');

/** CPU time used by the whole machine (all processes), in seconds, from /proc/stat. */
function machineCpu() {
  const l = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const hz = 100;
  const busy = l[0] + l[1] + l[2] + l[5] + l[6] + l[7]; // user nice system irq softirq steal
  return { busy: busy / hz, total: l.reduce((a, b) => a + b, 0) / hz };
}

// ---- the sandbox -----------------------------------------------------------------------------
async function makeSandbox(sizeGiB) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sbk-bench-'));
  cleanupSteps.push(async () => {
    if (KEEP) return log(`--keep: left ${dir}`);
    rmSync(dir, { recursive: true, force: true });
  });
  const image = path.join(dir, 'btrfs.img');
  const mnt = path.join(dir, 'mnt');
  await mkdir(mnt);
  await sh(`truncate -s ${sizeGiB}G ${q(image)} && mkfs.btrfs -q -f ${q(image)}`);
  await sh(`mount -o loop ${q(image)} ${q(mnt)}`);
  cleanupSteps.push(async () => {
    if (KEEP) return;
    await unmount(mnt);
  });
  const lxcDir = path.join(mnt, 'lxc');
  await sh(`btrfs -q subvolume create ${q(lxcDir)}`);
  const backupDir = path.join(lxcDir, 'backups');
  const work = path.join(mnt, 'work'); // baseline outputs, received subvolumes
  await sh(`btrfs -q subvolume create ${q(work)}`);
  const scratch = path.join(dir, 'scratch'); // outside BTRFS: streams, time files
  await mkdir(scratch);
  return { dir, image, mnt, lxcDir, backupDir, work, scratch };
}

async function unmount(mnt) {
  for (let i = 0; i < 20; i++) {
    try {
      execFileSync('umount', [mnt], { stdio: 'ignore' });
      return;
    } catch {
      if (!readFileSync('/proc/mounts', 'utf8').includes(` ${mnt} `)) return;
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  execFileSync('umount', ['-l', mnt], { stdio: 'ignore' });
}

function lxcConfig(cdir, name) {
  return [
    `# Subutai container ${name} (sbk benchmark)`,
    `lxc.rootfs = ${cdir}/rootfs`,
    `lxc.rootfs.mount = ${cdir}/rootfs`,
    `lxc.rootfs.backend = btrfs`,
    ...VOLUMES.filter((v) => v !== 'rootfs').map((v) => `lxc.mount.entry = ${cdir}/${v} ${v} none bind,rw 0 0`),
    `lxc.mount.entry = proc proc proc nodev,noexec,nosuid 0 0`,
    `lxc.mount = ${cdir}/fstab`,
    `lxc.utsname = ${name}`,
    `lxc.network.type = veth`,
    `lxc.network.link = lxcbr0`,
    `lxc.network.flags = up`,
    `lxc.network.hwaddr = 00:16:3e:5a:2b:01`,
    `lxc.network.veth.pair = veth5a2b01`,
    `lxc.arch = amd64`,
    '',
  ].join('\n');
}

async function makeContainerDir(sb, name, makeVolume) {
  const cdir = path.join(sb.lxcDir, name);
  await mkdir(cdir, { recursive: true });
  for (const v of VOLUMES) await makeVolume(v, path.join(cdir, v));
  await writeFile(path.join(cdir, 'config'), lxcConfig(cdir, name));
  await writeFile(path.join(cdir, 'fstab'), '');
  return cdir;
}


/** Pseudo-random, incompressible bytes (xorshift), fast enough to write GiBs. */
function randomBlock(size, seed) {
  const b = Buffer.allocUnsafe(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i + 4 <= size; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeUInt32LE(x >>> 0, i);
  }
  return b;
}

async function writeRandomFile(file, size, seed) {
  const fh = await open(file, 'w');
  try {
    for (let off = 0, i = 0; off < size; off += 8 * MiB, i++) await fh.write(randomBlock(Math.min(8 * MiB, size - off), seed * 1000 + i + 1));
  } finally {
    await fh.close();
  }
}

/** Log-like text: compresses about as well as real logs (5-8x). */
async function writeLogFile(file, size, seed) {
  const fh = await open(file, 'a');
  const words = ['GET', 'POST', '/api/v1/items', '/static/app.js', 'ok', 'timeout', 'user', 'session', 'cache', 'miss', 'hit', 'db', 'query'];
  let x = seed;
  const rnd = (n) => {
    x = (x * 1103515245 + 12345) >>> 0;
    return x % n;
  };
  try {
    let written = 0;
    while (written < size) {
      const lines = [];
      for (let i = 0; i < 20000; i++) {
        const t = 1700000000 + rnd(1e6);
        lines.push(`${t} host${rnd(20)} app[${rnd(65535)}]: ${words[rnd(words.length)]} ${words[rnd(words.length)]} ${rnd(1e5)} ${rnd(2) ? 'status=200' : `status=${400 + rnd(100)}`} ms=${rnd(5000)}`);
      }
      const chunk = Buffer.from(lines.join('\n') + '\n').subarray(0, size - written);
      await fh.write(chunk);
      written += chunk.length;
    }
  } finally {
    await fh.close();
  }
}

/** Every regular file below `dir`, sorted. */
async function listFiles(dir) {
  const out = [];
  const walk = async (d) => {
    for (const n of (await readdir(d)).sort()) {
      const p = path.join(d, n);
      const st = await lstat(p);
      if (st.isDirectory()) await walk(p);
      else if (st.isFile()) out.push(p);
    }
  };
  await walk(dir);
  return out;
}

/** The incremental change: updated files, a removed and a renamed tree, new files, logs. */
async function applyChange(cdir) {
  const files = await listFiles(path.join(cdir, 'rootfs'));
  let modified = 0;
  for (let i = 0; i < files.length; i += 50) {
    await appendFile(files[i], randomBlock(1024, i));
    modified++;
  }
  // A package removed and a directory renamed.
  const top = path.join(cdir, 'rootfs', path.relative('/usr', SOURCES.rootfs.find((s) => existsSync(s)) ?? '/usr/lib'));
  const dirs = (await readdir(top, { withFileTypes: true })).filter((e) => e.isDirectory()).map((e) => e.name).sort();
  if (dirs.length >= 2) {
    await rm(path.join(top, dirs[dirs.length - 1]), { recursive: true, force: true });
    await rename(path.join(top, dirs[0]), path.join(top, dirs[0] + '.renamed'));
  }
  // A package installed into opt.
  const seen = new Set();
  const added = await copyBudget(['/usr/include', '/usr/bin', '/usr/share'], path.join(cdir, 'opt', 'new-package'), QUICK ? 25 * MiB : 100 * MiB, seen);
  // Logs grown, an upload in home.
  await mkdir(path.join(cdir, 'var', 'log'), { recursive: true });
  await writeLogFile(path.join(cdir, 'var', 'log', 'app.log'), QUICK ? 4 * MiB : 16 * MiB, 7);
  await writeRandomFile(path.join(cdir, 'home', 'upload.bin'), QUICK ? 8 * MiB : 32 * MiB, 3);
  return { modified, addedBytes: added.bytes };
}

// ---- sbk helpers -----------------------------------------------------------------------------
async function removeSubvolumesIn(dir) {
  if (!existsSync(dir)) return;
  const subs = [];
  for (const n of await readdir(dir)) {
    const p = path.join(dir, n);
    const st = await lstat(p);
    if (st.isDirectory() && st.ino === 256) subs.push(p);
  }
  if (subs.length) await sh(`btrfs -q subvolume delete ${subs.map(q).join(' ')}`);
  await rm(dir, { recursive: true, force: true });
}

/** Removes one backup (its archive, sidecar and snapshot set) so the next run has the same parent. */
async function dropBackup(sb, name) {
  const m = /^(.+)_(\d+)(_Full)?$/.exec(name);
  if (!m) throw new Error(`odd backup name ${name}`);
  const [, c, t, full] = m;
  await rm(path.join(sb.backupDir, `${name}.tar.gz`), { force: true });
  await rm(path.join(sb.backupDir, `${name}_changelog.txt`), { force: true });
  await rm(path.join(sb.backupDir, `${c}_${t}_changelog.txt`), { force: true }); // the older name of a Full's
  await removeSubvolumesIn(path.join(sb.backupDir, c, `${t}${full ?? ''}`));
}

/** The backup names sbk-pack printed (stored paths, one a line). */
const storedNames = (stdout) =>
  stdout.split('\n').filter(Boolean).map((p) => path.basename(p).replace(/\.tar\.gz$/, ''));

async function waitNextSecond() {
  // Backups are named by unix second: never two in one second.
  const now = Date.now();
  await new Promise((r) => setTimeout(r, 1100 - (now % 1000)));
}

// ---- sections ----------------------------------------------------------------------------------
const results = { sections: {}, notes: [] };

/**
 * Runs each contender once per round, the order rotated every round (so none always goes first
 * or last); `after(name, round, result)` puts things back for the next run (untimed).
 */
async function alternate(label, contenders, after, rounds = ROUNDS) {
  const names = Object.keys(contenders);
  const runs = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < names.length; i++) {
      const n = names[(i + r) % names.length];
      const res = await contenders[n](r);
      res.load = loadavg();
      runs[n].push(res);
      log(`${label}, round ${r + 1}/${rounds}: ${n} ${fmtS(res.wall)} s`);
      if (after) await after(n, r, res);
    }
  }
  return runs;
}

const med = (runs, f = (x) => x.wall) => median(runs.map(f));
/** CPU seconds (user + sys) of all the stages of a run, their children included. */
const cpuOf = (r) => Object.values(r.stages ?? {}).reduce((a, s) => a + s.user + s.sys, 0);

/** Per stage over several runs: median wall and CPU seconds, the largest peak RSS. */
function stageSummary(runs) {
  const out = {};
  for (const run of runs)
    for (const [name, s] of Object.entries(run.stages ?? {})) {
      const o = (out[name] ??= { rssKiB: 0, cpu: [], wall: [] });
      o.rssKiB = Math.max(o.rssKiB, s.rssKiB);
      o.cpu.push(s.user + s.sys);
      o.wall.push(s.wall);
    }
  for (const o of Object.values(out)) {
    o.cpu = median(o.cpu);
    o.wall = median(o.wall);
  }
  return out;
}

/** Runs `cmd` with stderr on a pseudo-terminal (redirect its stdin and stdout); what it shows goes to `ts`. */
const pty = (cmd, ts = '/dev/null') => `script -qefc ${q(cmd)} ${q(ts)} > /dev/null`;

/** "sbk-x: progress: N redraws, X ms drawing" (printed with -v) from a typescript. */
function drawingCost(ts) {
  const m = /progress: (\d+) redraws, ([\d.]+) ms drawing/.exec(readFileSync(ts, 'utf8'));
  return m ? { draws: Number(m[1]), ms: Number(m[2]) } : undefined;
}

// (a) compression of one stream: sbk-pack vs gzip vs pigz; (f) sbk-pack with and without progress
async function sectionCompress(sb, tarFile) {
  const size = (await stat(tarFile)).size;
  const out = (n) => path.join(sb.scratch, `a-${n}.gz`);
  // With (f), sbk-pack runs with stderr on a pseudo-terminal, with --no-progress (what it does
  // when stderr is not a terminal: its entry in (a)) and with --progress -v (drawing), in pairs.
  const ts = path.join(sb.scratch, 'a-progress.ts');
  const sbkPack = (p) =>
    ONLY.has('f')
      ? pty(`${BIN('sbk-pack')} -o - ${p ? '--progress -v' : '--no-progress'} < ${q(tarFile)} > ${q(out(p ? 'sbk-p' : 'sbk'))}`, p ? ts : undefined)
      : `${BIN('sbk-pack')} -o - < ${q(tarFile)} > ${q(out('sbk'))}`;
  const contenders = {
    'sbk-pack': () => pipeline([T('sbk-pack', sbkPack(false))]),
    'gzip -6': () => pipeline([T('gzip -6', `gzip -6 < ${q(tarFile)} > ${q(out('gzip'))}`)]),
    'pigz -6 -p2': () => pipeline([T('pigz -6 -p2', `pigz -6 -p2 < ${q(tarFile)} > ${q(out('pigz'))}`)]),
  };
  if (ONLY.has('f'))
    contenders['sbk-pack --progress'] = async () => {
      const r = await pipeline([T('sbk-pack', sbkPack(true))]);
      r.drawing = drawingCost(ts);
      return r;
    };
  const runs = await alternate('(a) compress', contenders);
  const sizes = {};
  for (const [n, f] of [['sbk-pack', 'sbk'], ['gzip -6', 'gzip'], ['pigz -6 -p2', 'pigz']]) sizes[n] = (await stat(out(f))).size;
  // Every output decompresses to the input; the sbk-pack one with gzip, pigz and Python too.
  for (const f of ['sbk', 'gzip', 'pigz']) await sh(`gzip -dc ${q(out(f))} | cmp - ${q(tarFile)}`);
  await sh(`pigz -dc ${q(out('sbk'))} | cmp - ${q(tarFile)}`);
  const py = await sh(
    `python3 -c 'import gzip,shutil,sys; shutil.copyfileobj(gzip.open(sys.argv[1]), sys.stdout.buffer, 1<<20)' ${q(out('sbk'))} | cmp - ${q(tarFile)}`,
    { allowFail: true },
  );
  results.sections.a = { inputBytes: size, runs, sizes, pythonOk: py.code === 0 };
  if (ONLY.has('f')) (results.sections.f ??= {})['sbk-pack -o -'] = { '--no-progress': runs['sbk-pack'], '--progress': runs['sbk-pack --progress'] };
  for (const f of ['sbk', 'gzip', 'pigz', 'sbk-p']) await rm(out(f), { force: true });
}

// (f) the cost of progress: sbk-send and sbk-unpack --verify with stderr on a pseudo-terminal,
// in pairs: with --progress -v (drawing; -v reports the time spent drawing) and with
// --no-progress, the order alternating. (sbk-pack's pairs are part of (a).)
async function sectionProgress(sb, recFile, archive) {
  const ts = path.join(sb.scratch, 'f-progress.ts');
  const flag = (p) => (p ? '--progress -v' : '--no-progress');
  const run = (stage, cmd) => (p) => async () => {
    const r = await pipeline([T(stage, pty(cmd(flag(p)), p ? ts : undefined))]);
    if (p) r.drawing = drawingCost(ts);
    return r;
  };
  const send = run('sbk-send', (f) => `${BIN('sbk-send')} ${f} < ${q(recFile)} > /dev/null`);
  const verify = run('sbk-unpack', (f) => `${BIN('sbk-unpack')} --verify ${f} ${q(archive)} > /dev/null`);
  const pairs = (label, make) => alternate(label, { '--no-progress': make(false), '--progress': make(true) }, undefined, F_ROUNDS);
  const f = (results.sections.f ??= {});
  f.rounds = F_ROUNDS;
  f['sbk-send'] = await pairs('(f) sbk-send', send);
  f['sbk-unpack --verify'] = await pairs('(f) sbk-unpack --verify', verify);
  // What sbk-send's size estimate (a metadata-only send) costs next to the real send, per volume.
  const rec = JSON.parse(readFileSync(recFile, 'utf8').split('\n')[0]);
  f.estimate = [];
  for (const v of rec.volumes) {
    const cpu = async (noData) => {
      const r = await pipeline([T('btrfs send', `btrfs send -q ${noData ? '--no-data ' : ''}${q(v.snapshot)} > /dev/null`)]);
      const st = r.stages['btrfs send'];
      return st.user + st.sys;
    };
    f.estimate.push({ volume: v.name, send: await cpu(false), noData: await cpu(true) });
  }
}

// (b) whole backups, Full and incremental, against btrfs send | pigz of the same volumes
async function sectionBackup(sb, parentSet) {
  const snapDir = path.join(sb.work, 'b-snaps');
  const file = path.join(sb.work, 'b-pigz.gz');
  const src = path.join(sb.lxcDir, 'c1');
  const sbk = (full) => async () => {
    await waitNextSecond();
    const r = await pipeline([
      T('sbk-snap', `${BIN('sbk-snap')}${full ? ' --full' : ''} c1`),
      T('sbk-send', BIN('sbk-send')),
      T('sbk-pack', BIN('sbk-pack')),
    ]);
    r.name = storedNames(r.stdout)[0];
    r.size = (await stat(path.join(sb.backupDir, `${r.name}.tar.gz`))).size;
    return r;
  };
  // The same work by hand: read-only snapshots of the four volumes, sent (against the same
  // parent snapshots as sbk's incremental) into one pigz file.
  const base = (full, parent = parentSet) => async () => {
    await mkdir(snapDir, { recursive: true });
    const snaps = VOLUMES.map((v) => `btrfs -q subvolume snapshot -r ${q(path.join(src, v))} ${q(path.join(snapDir, v))}`).join(' && ');
    const sends = VOLUMES.map((v) => `btrfs send -q ${full ? '' : `-p ${q(path.join(parent, v))} `}${q(path.join(snapDir, v))}`).join(' && ');
    const r = await pipeline([T('snapshots + btrfs send', `bash -c ${q(`${snaps} && ${sends}`)}`), T('pigz -6 -p2', `pigz -6 -p2 > ${q(file)}`)]);
    r.size = (await stat(file)).size;
    return r;
  };
  const after = (keepLast) => async (n, r, res) => {
    const keep = keepLast && r === ROUNDS - 1;
    if (n === 'sbk') {
      if (!keep) await dropBackup(sb, res.name);
    } else {
      await removeSubvolumesIn(snapDir);
      if (keep) await rename(file, path.join(sb.work, 'base-inc.gz'));
      else await rm(file, { force: true });
    }
  };
  const full = await alternate('(b) Full backup', { sbk: sbk(true), 'btrfs send | pigz': base(true) }, after(false));
  const inc = await alternate('(b) incremental backup', { sbk: sbk(false), 'btrfs send | pigz': base(false) }, after(true));
  // An incremental with nothing changed since the last one: what a backup costs beyond its data
  // (process start-up, snapshots, fsync, confirmation). Its parent is the incremental kept above.
  const last = inc.sbk.at(-1).name;
  const lastSet = path.join(sb.backupDir, 'c1', last.replace(/^c1_/, ''));
  const empty = await alternate('(b) incremental, nothing changed', { sbk: sbk(false), 'btrfs send | pigz': base(false, lastSet) }, after(false));
  results.sections.b = { full, inc, empty };
}

// (c) restore of the chain Full + incremental
async function sectionRestore(sb) {
  const d1 = path.join(sb.work, 'recv-full');
  const d2 = path.join(sb.work, 'recv-inc');
  const sbk = () => pipeline([T('sbk-plan', `${BIN('sbk-plan')} c1`), T('sbk-unpack', `${BIN('sbk-unpack')} --as r1`)]);
  const base = async () => {
    await mkdir(d1, { recursive: true });
    await mkdir(d2, { recursive: true });
    const s = [
      T('gzip -dc (Full)', `gzip -dc ${q(path.join(sb.work, 'base-full.gz'))}`),
      T('btrfs receive (Full)', `btrfs receive ${q(d1)}`),
      T('gzip -dc (incr.)', `gzip -dc ${q(path.join(sb.work, 'base-inc.gz'))}`),
      T('btrfs receive (incr.)', `btrfs receive ${q(d2)}`),
    ];
    const r = await sh(`${s[0].text} | ${s[1].text} && ${s[2].text} | ${s[3].text}`);
    return { wall: r.ms / 1000, stages: Object.fromEntries(s.map((x) => [x.name, readTime(x)])) };
  };
  const after = async (n) => {
    if (n === 'sbk') await removeSubvolumesIn(path.join(sb.lxcDir, 'r1'));
    else {
      await removeSubvolumesIn(d2);
      await removeSubvolumesIn(d1);
    }
  };
  results.sections.c = await alternate('(c) restore', { sbk: sbk, 'gzip -dc | btrfs receive': base }, after);
}

// (d) every stage on a delta of more than 2 GiB
async function sectionBig(sb) {
  const c1 = path.join(sb.lxcDir, 'c1');
  const cdir = await makeContainerDir(sb, 'big', async (v, dst) => {
    // A writable snapshot of c1's volume: its Full send carries all of c1's data again.
    await sh(`btrfs -q subvolume snapshot ${q(path.join(c1, v))} ${q(dst)}`);
  });
  await writeRandomFile(path.join(cdir, 'opt', 'random.bin'), QUICK ? 192 * MiB : 800 * MiB, 11);
  await mkdir(path.join(cdir, 'var', 'log'), { recursive: true });
  await writeLogFile(path.join(cdir, 'var', 'log', 'big.log'), QUICK ? 64 * MiB : 320 * MiB, 5);
  await sh('sync');
  const err = path.join(sb.scratch, 'd-progress.txt');
  const backup = await pipeline(
    [
      T('sbk-snap', `${BIN('sbk-snap')} --full big`),
      T('sbk-changelog', BIN('sbk-changelog')),
      T('sbk-send', `${BIN('sbk-send')} --progress`),
      T('sbk-pack', `${BIN('sbk-pack')} --progress`),
    ],
    { before: `exec 2> ${q(err)}` },
  );
  const name = storedNames(backup.stdout)[0];
  const archive = path.join(sb.backupDir, `${name}.tar.gz`);
  const restore = await pipeline([T('sbk-plan', `${BIN('sbk-plan')} big`), T('sbk-unpack', `${BIN('sbk-unpack')} --progress --as big2`)], {
    before: `exec 2>> ${q(err)}`,
  });
  // sbk-pack's line: "sbk-pack: NAME: 2.21 GiB → 1.30 GiB (58.9%), 35.2 s, 64.1 MiB/s" (3 digits).
  const m = /sbk-pack: \S+: ([\d.]+) (B|KiB|MiB|GiB|TiB) →/.exec(readFileSync(err, 'utf8'));
  const deltaBytes = m ? Number(m[1]) * 1024 ** ['B', 'KiB', 'MiB', 'GiB', 'TiB'].indexOf(m[2]) : NaN;
  results.sections.d = {
    deltaBytes,
    archiveBytes: (await stat(archive)).size,
    backup,
    restore,
    progress: readFileSync(err, 'utf8').split('\n').filter((l) => !/\r|\x1b/.test(l)).slice(0, 40).join('\n'),
  };
  await removeSubvolumesIn(path.join(sb.lxcDir, 'big2'));
  await dropBackup(sb, name);
  await removeSubvolumesIn(cdir).catch(() => {});
  await rm(cdir, { recursive: true, force: true });
}

// (e) --help of every binary
async function sectionHelp() {
  // Every binary of the verb registry (compiled by the build this bench runs first).
  const { VERBS } = await import(new URL('../dist/cli/verbs.js', import.meta.url).href);
  const bins = VERBS.map((v) => v.name);
  const cmds = { 'node -e 0 (for scale)': [process.execPath, ['-e', '0']], ...Object.fromEntries(bins.map((b) => [b, [BIN(b), ['--help']]])) };
  const out = Object.fromEntries(Object.keys(cmds).map((k) => [k, { wall: [], cpu: [] }]));
  const tf = path.join(TIMEDIR, 'help.time');
  for (let r = 0; r < HELP_RUNS; r++) {
    for (const [k, [cmd, args]] of Object.entries(cmds)) {
      const t0 = performance.now();
      await new Promise((resolve, reject) => {
        const c = spawn(TIME, ['-f', '%U %S', '-o', tf, cmd, ...args], { stdio: ['ignore', 'ignore', 'ignore'] });
        c.on('error', reject);
        c.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`${k} --help exited ${code}`))));
      });
      out[k].wall.push(performance.now() - t0);
      const [u, s] = readFileSync(tf, 'utf8').trim().split(/\s+/).map(Number);
      out[k].cpu.push((u + s) * 1000);
    }
  }
  results.sections.e = Object.fromEntries(
    Object.entries(out).map(([k, v]) => [k, { median: median(v.wall), min: Math.min(...v.wall), cpu: median(v.cpu), runs: v.wall.length }]),
  );
  log(`(e) --help: ${Object.entries(results.sections.e).map(([k, v]) => `${k} ${v.median.toFixed(0)} ms`).join(', ')}`);
}

// (g) the changelog bench of bench/changelog.mjs
async function sectionChangelog() {
  const r = await sh(`node ${q(path.join(ROOT, 'bench', 'changelog.mjs'))} ${QUICK ? 10000 : 50000} ${QUICK ? 5 : 7}`);
  // Two lines: the one-file change, then a first Full's changelog (every path added).
  const lines = r.stdout.trim().split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
  results.sections.g = { ...lines.find((x) => x.bench === 'changelog one-file change'), first: lines.find((x) => x.bench?.startsWith('changelog first Full')) };
  log(`(g) changelog: ${JSON.stringify(results.sections.g)}`);
}

// --profile: the JS stages under the V8 CPU profiler
async function sectionProfile(sb, recFile, archive) {
  const dir = path.join(sb.scratch, 'prof');
  const tar = path.join(sb.scratch, 'prof.tar');
  const gz = path.join(sb.scratch, 'prof.tar.gz');
  const run = async (label, script) => {
    const d = path.join(dir, label.replace(/[^a-z0-9-]/gi, '_'));
    await mkdir(d, { recursive: true });
    // node --cpu-prof (not allowed in NODE_OPTIONS) on the launcher; the pool as bin/sbk-pack sizes it.
    const r = await sh(script.replaceAll('NODE ', `node --cpu-prof --cpu-prof-dir=${q(d)} `), {
      env: { UV_THREADPOOL_SIZE: String(os.availableParallelism() + 3) },
    });
    const files = (await readdir(d)).filter((f) => f.endsWith('.cpuprofile'));
    // The profile of the stage itself is the one with the most samples (not a helper child).
    let best;
    for (const f of files) {
      const p = JSON.parse(await readFile(path.join(d, f), 'utf8'));
      if (!best || p.samples.length > best.samples.length) best = p;
    }
    return { label, wall: r.ms / 1000, summary: summarizeProfile(best) };
  };
  const out = [];
  out.push(await run('sbk-send', `NODE ${BIN('sbk-send')} < ${q(recFile)} > ${q(tar)}`));
  out.push(await run('sbk-pack', `NODE ${BIN('sbk-pack')} -o - < ${q(tar)} > ${q(gz)}`));
  out.push(await run('sbk-unpack --verify', `NODE ${BIN('sbk-unpack')} --verify ${q(gz)}`));
  out.push(await run('sbk-unpack (restore)', `NODE ${BIN('sbk-unpack')} --as prof1 ${q(archive)}`));
  await removeSubvolumesIn(path.join(sb.lxcDir, 'prof1'));
  await rm(tar, { force: true });
  await rm(gz, { force: true });
  results.profile = out;
}

function summarizeProfile(p) {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const dt = p.timeDeltas[i] / 1000;
    total += dt;
    self.set(p.samples[i], (self.get(p.samples[i]) ?? 0) + dt);
  }
  const byFn = new Map();
  const byFile = new Map();
  for (const [id, t] of self) {
    const cf = byId.get(id).callFrame;
    const url = (cf.url || `(${cf.functionName})`).replace(/^file:\/\//, '').replace(ROOT, '');
    const fn = `${cf.functionName || '(anonymous)'} ${url}${cf.url ? `:${cf.lineNumber + 1}` : ''}`;
    byFn.set(fn, (byFn.get(fn) ?? 0) + t);
    byFile.set(url, (byFile.get(url) ?? 0) + t);
  }
  const top = (m, k) => [...m].sort((a, b) => b[1] - a[1]).slice(0, k).map(([n, t]) => ({ name: n, ms: t, pct: (100 * t) / total }));
  return { totalMs: total, functions: top(byFn, 18), files: top(byFile, 10) };
}

// ---- the report --------------------------------------------------------------------------------
const NOTES_MARK = '<!-- Everything below this line is kept when the benchmark rewrites this file. -->';

function machineInfo() {
  const mem = /MemTotal:\s+(\d+)/.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1];
  const first = (cmd) => {
    try {
      return execFileSync('bash', ['-c', cmd], { encoding: 'utf8' }).split('\n')[0].trim();
    } catch {
      return '?';
    }
  };
  return {
    cpu: os.cpus()[0]?.model ?? '?',
    nproc: os.availableParallelism(),
    memGiB: mem ? (Number(mem) / 1024 / 1024).toFixed(1) : '?',
    kernel: os.release(),
    node: process.version,
    uvThreadpool: process.env.UV_THREADPOOL_SIZE ?? '(default 4)',
    btrfs: first('btrfs --version'),
    gzip: first('gzip --version'),
    pigz: first('pigz --version 2>&1'),
    os: first('. /etc/os-release && echo "$PRETTY_NAME"'),
  };
}

function row(cells) {
  return `| ${cells.map((c) => String(c).replace(/\|/g, '\\|')).join(' | ')} |`;
}

function table(head, rows) {
  return [row(head), row(head.map((h, i) => (i === 0 ? '---' : '---:'))), ...rows.map(row)].join('\n');
}

const yes = (ok) => (ok ? 'yes' : '**no**');

function report(meta) {
  const S = results.sections;
  // As the run that measured them was (the report may be rendered again with --report-only).
  const QUICK = meta.quick ?? false;
  const ROUNDS = meta.rounds ?? 3;
  const L = [];
  const targets = [];
  L.push('# sbk benchmark results', '');
  L.push(
    `Written by \`npm run bench\` (\`node bench/run.js${meta.argv?.length ? ' ' + meta.argv.join(' ') : ''}\`) on ${meta.date}: ` +
      `${QUICK ? 'quick run (small content; the targets are judged on a full run)' : 'full run'}, ${ROUNDS} rounds per comparison, ` +
      `contenders alternated (the order rotates each round), medians of wall-clock times; total ${fmtS(meta.seconds / 60)} min.`,
    '',
  );
  const m = meta.machine;
  L.push('## Machine', '');
  L.push(
    table(
      ['', ''],
      [
        ['CPU', `${m.cpu}, ${m.nproc} cores (nproc)`],
        ['memory', `${m.memGiB} GiB`],
        ['OS, kernel', `${m.os}, ${m.kernel}`],
        ['node', m.node],
        ['tools', `${m.btrfs}; ${m.gzip}; ${m.pigz}`],
        ['load average (1, 5, 15 min)', `at start ${meta.loadStart}; at end ${meta.loadEnd}`],
        ['whole machine CPU busy during the run', `${meta.busyPct.toFixed(0)}% of ${m.nproc} cores (other users' work included)`],
      ],
    ),
    '',
  );
  if (meta.content)
    L.push(
      `Container \`c1\`: four subvolumes filled from this machine's /usr (${Object.entries(meta.content)
        .map(([v, c]) => `${v} ${fmtMiB(c.bytes)} MiB in ${c.files} files`)
        .join(', ')}); the incremental change appends to every 50th file of rootfs (${meta.change.modified} files), removes ` +
        `and renames a directory, adds ${fmtMiB(meta.change.addedBytes)} MiB of new files, a log and an incompressible upload.`,
      '',
    );

  // (a)
  if (S.a) {
    const a = S.a;
    const t = (n) => med(a.runs[n]);
    const mbs = (n) => (a.inputBytes / MiB / t(n)).toFixed(1);
    const vsGzip = t('gzip -6') / t('sbk-pack');
    const vsPigz = t('pigz -6 -p2') / t('sbk-pack');
    const size = a.sizes['sbk-pack'] / a.sizes['gzip -6'];
    targets.push(['sbk-pack throughput vs gzip -6', `${vsGzip.toFixed(2)}×`, '≥ 1.8×', yes(vsGzip >= 1.8)]);
    targets.push(['sbk-pack throughput vs pigz -6 -p2', `${vsPigz.toFixed(2)}×`, '≥ 1.0×', yes(vsPigz >= 1.0)]);
    targets.push(['sbk-pack size vs gzip -6', `${size.toFixed(4)}×`, '≤ 1.005×', yes(size <= 1.005)]);
    L.push(`## (a) Compression of one stream: sbk-pack vs gzip -6 vs pigz -6 -p2`, '');
    L.push(
      `Input: the sbk-send tar stream of a Full backup of c1, ${fmtMiB(a.inputBytes)} MiB, read from a file (page cache), output to a file. ` +
        `\`sbk-pack -o -\` also parses the tar and checks every sha256 against the trailer. Output checked with \`gzip -dc\`, \`pigz -dc\`` +
        `${a.pythonOk ? ' and Python\'s gzip' : ''} against the input.`,
      '',
    );
    L.push(
      table(
        ['', 'median s', 'min–max s', 'MiB/s', 'CPU s (user+sys)', 'peak RSS MiB', 'output MiB', 'size vs gzip -6', 'speed vs sbk-pack'],
        ['sbk-pack', 'gzip -6', 'pigz -6 -p2'].map((n) => {
          const rs = a.runs[n];
          const w = rs.map((r) => r.wall);
          const st = stageSummary(rs)[Object.keys(rs[0].stages)[0]];
          return [
            n,
            fmtS(t(n)),
            `${fmtS(Math.min(...w))}–${fmtS(Math.max(...w))}`,
            mbs(n),
            fmtS(st.cpu),
            (st.rssKiB / 1024).toFixed(0),
            fmtMiB(a.sizes[n]),
            fmtRatio(a.sizes[n] / a.sizes['gzip -6']),
            n === 'sbk-pack' ? '1' : `${(t(n) / t('sbk-pack')).toFixed(2)}× slower`,
          ];
        }),
      ),
      '',
    );
  }

  // (b)
  if (S.b) {
    L.push('## (b) Whole backup: `sbk-snap | sbk-send | sbk-pack` vs `btrfs send | pigz -6 -p2 > file`', '');
    L.push(
      'The baseline takes read-only snapshots of the same four volumes and sends them (incremental: against the same parent snapshots ' +
        'as sbk) into one pigz file on the same filesystem. sbk also frames, checksums, verifies, fsyncs and links the archive and confirms the set.',
      '',
    );
    const rows = [];
    for (const [kind, runs] of [['Full', S.b.full], ['incremental', S.b.inc], ['incremental, nothing changed', S.b.empty]]) {
      if (!runs) continue;
      const s = med(runs.sbk);
      const b = med(runs['btrfs send | pigz']);
      const ratio = s / b;
      const cpuRatio = med(runs.sbk, cpuOf) / med(runs['btrfs send | pigz'], cpuOf);
      if (kind !== 'incremental, nothing changed')
        targets.push([`backup wall time vs btrfs send | pigz (${kind})`, `${ratio.toFixed(3)}× (CPU ${cpuRatio.toFixed(2)}×)`, '≤ 1.10×', yes(ratio <= 1.1)]);
      rows.push([
        kind,
        `${fmtS(s)} (${runs.sbk.map((r) => fmtS(r.wall)).join(', ')})`,
        `${fmtS(b)} (${runs['btrfs send | pigz'].map((r) => fmtS(r.wall)).join(', ')})`,
        `**${ratio.toFixed(3)}**`,
        `${fmtS(med(runs.sbk, cpuOf))} / ${fmtS(med(runs['btrfs send | pigz'], cpuOf))} = ${cpuRatio.toFixed(2)}`,
        `${fmtMiB(median(runs.sbk.map((r) => r.size)))} / ${fmtMiB(median(runs['btrfs send | pigz'].map((r) => r.size)))}`,
      ]);
    }
    L.push(table(['backup', 'sbk s (runs)', 'baseline s (runs)', 'sbk / baseline', 'CPU s sbk / baseline', 'size MiB sbk / baseline'], rows), '');
    if (S.b.empty) {
      const fixed = med(S.b.empty.sbk) - med(S.b.empty['btrfs send | pigz']);
      const extra = med(S.b.inc.sbk) - med(S.b.inc['btrfs send | pigz']);
      const fixedCpu = med(S.b.empty.sbk, cpuOf) - med(S.b.empty['btrfs send | pigz'], cpuOf);
      const incCpu = { sbk: med(S.b.inc.sbk, cpuOf), base: med(S.b.inc['btrfs send | pigz'], cpuOf) };
      const cores = meta.machine?.nproc ?? os.availableParallelism();
      L.push(
        `An incremental with nothing changed shows what a backup costs beyond its data: ${fmtS(fixed)} s more than by hand ` +
          `(three Node processes starting, ${fmtS(fixedCpu)} s of CPU in all; sbk-snap\'s lock and parent checks; sbk-pack\'s fsync, lock, ` +
          `confirmation and pruning). Of the incremental's ${fmtS(extra)} s over the baseline, that fixed part is ` +
          `${Math.round((100 * fixed) / Math.max(extra, 1e-9))}%; it does not grow with the delta, so the ratio falls towards the Full's as deltas grow. ` +
          `Both pipes keep the ${cores} cores busy (CPU time / wall time: sbk ${(incCpu.sbk / med(S.b.inc.sbk)).toFixed(2)}, ` +
          `baseline ${(incCpu.base / med(S.b.inc['btrfs send | pigz'])).toFixed(2)}), so the wall-clock gap follows the CPU sbk spends beyond the ` +
          `baseline: ${fmtS(incCpu.sbk - incCpu.base)} s, which on ${cores} cores is ${fmtS((incCpu.sbk - incCpu.base) / cores)} s.`,
        '',
      );
    }
    L.push('Per stage (medians over the rounds; peak RSS is the maximum):', '');
    const srows = [];
    for (const [kind, runs] of [['Full', S.b.full], ['incr.', S.b.inc], ['no change', S.b.empty]])
      for (const [who, rs] of Object.entries(runs ?? {}))
        for (const [st, v] of Object.entries(stageSummary(rs)))
          srows.push([`${kind}: ${who}`, st, fmtS(v.wall), fmtS(v.cpu), (v.rssKiB / 1024).toFixed(0)]);
    L.push(table(['run', 'stage', 'wall s', 'CPU s', 'peak RSS MiB'], srows), '');
  }

  // (c)
  if (S.c) {
    const s = med(S.c.sbk);
    const b = med(S.c['gzip -dc | btrfs receive']);
    const ratio = s / b;
    const cpuRatio = med(S.c.sbk, cpuOf) / med(S.c['gzip -dc | btrfs receive'], cpuOf);
    targets.push(['restore wall time vs gzip -dc | btrfs receive', `${ratio.toFixed(3)}× (CPU ${cpuRatio.toFixed(2)}×)`, '≤ 1.15×', yes(ratio <= 1.15)]);
    L.push('## (c) Restore: `sbk-plan | sbk-unpack` vs `gzip -dc | btrfs receive`', '');
    L.push(
      'The chain Full + incremental of (b). The baseline receives the pigz files of the same volumes (Full, then incremental into a ' +
        'second directory); sbk also plans the chain from the manifests, checks every sha256 and send-stream CRC32C, makes the live ' +
        'writable snapshots, writes the meta files and moves the container into place.',
      '',
    );
    L.push(
      table(
        ['', 'median s', 'runs s', 'sbk / baseline'],
        [
          ['sbk-plan c1 | sbk-unpack --as r1', fmtS(s), S.c.sbk.map((r) => fmtS(r.wall)).join(', '), `**${ratio.toFixed(3)}**`],
          ['gzip -dc | btrfs receive (×2)', fmtS(b), S.c['gzip -dc | btrfs receive'].map((r) => fmtS(r.wall)).join(', '), '1'],
        ],
      ),
      '',
    );
    const srows = [];
    for (const [who, rs] of Object.entries(S.c))
      for (const [st, v] of Object.entries(stageSummary(rs))) srows.push([who, st, fmtS(v.wall), fmtS(v.cpu), (v.rssKiB / 1024).toFixed(0)]);
    L.push(table(['run', 'stage', 'wall s', 'CPU s', 'peak RSS MiB'], srows), '');
  }

  // (d)
  const rssRows = [];
  let maxRss = 0;
  if (S.d) {
    const d = S.d;
    L.push(`## (d) Peak memory of every stage on a ${(d.deltaBytes / GiB).toFixed(2)} GiB delta`, '');
    L.push(
      `Container \`big\`: c1's volumes again plus ${QUICK ? '192' : '800'} MiB of incompressible data and a ${QUICK ? '64' : '320'} MiB log; ` +
        `a Full backup (${(d.deltaBytes / GiB).toFixed(2)} GiB of send streams, archive ${fmtMiB(d.archiveBytes)} MiB), then its restore. ` +
        'Peak RSS from `/usr/bin/time -v` (maximum resident set size) of each stage.',
      '',
    );
    for (const [what, r] of [['backup', d.backup], ['restore', d.restore], ['verify', d.verify]]) {
      if (!r) continue;
      for (const [st, v] of Object.entries(r.stages)) {
        const mib = v.rssKiB / 1024;
        maxRss = Math.max(maxRss, mib);
        rssRows.push([`${what} (${fmtS(r.wall)} s)`, st, fmtS(v.wall), fmtS(v.user + v.sys), `${mib.toFixed(0)}`]);
      }
    }
    L.push(table(['pipeline', 'stage', 'wall s', 'CPU s', 'peak RSS MiB'], rssRows), '');
    if (!QUICK || d.deltaBytes >= 2 * GiB) targets.push(['peak RSS of every stage, delta ≥ 2 GiB', `${maxRss.toFixed(0)} MiB`, '≤ 150 MiB', yes(maxRss <= 150)]);
    L.push('Progress lines (`--progress`, stderr to a file):', '', '```', d.progress, '```', '');
  }

  // (e)
  if (S.e) {
    L.push('## (e) `--help`', '');
    L.push(`${HELP_RUNS} runs of each, interleaved; wall time from spawn to exit as seen by the bench, CPU from /usr/bin/time.`, '');
    let worst = 0;
    L.push(
      table(
        ['', 'median ms', 'min ms', 'CPU ms (median)'],
        Object.entries(S.e).map(([k, v]) => {
          if (k.startsWith('sbk')) worst = Math.max(worst, v.median);
          return [k, v.median.toFixed(0), v.min.toFixed(0), v.cpu.toFixed(0)];
        }),
      ),
      '',
    );
    targets.push(['--help, slowest binary (median)', `${worst.toFixed(0)} ms`, '≤ 150 ms', yes(worst <= 150)]);
  }

  // (f)
  if (S.f) {
    L.push('## (f) The cost of progress', '');
    L.push(
      'Each stage with stderr on a pseudo-terminal (`script`; stdin and stdout redirected), in pairs: once with --progress ' +
        '(a status line redrawn at most 4 times a second; sbk-send also estimates a volume\'s size with `btrfs send --no-data`, ' +
        'at the lowest CPU priority, once the volume has been sending for 3 s) and once with --no-progress, the order ' +
        'alternating. sbk-pack compresses the stream of (a), sbk-send sends c1 to /dev/null, sbk-unpack --verify reads c1\'s Full ' +
        'archive. The A/B cost is the median over the pairs of (with / without − 1), in wall time and in CPU time (user + sys, ' +
        'children included); on this shared machine two runs of the same command differ by a few percent, and a negative cost is ' +
        'that noise. The drawing cost is measured inside the process (-v reports the time spent formatting and writing the ' +
        'lines) and divided by the run\'s wall time: the share of one core that progress itself takes.',
      '',
    );
    const pct = (x) => `${x >= 0 ? '+' : ''}${x.toFixed(1)}%`;
    const paired = (a, b, f) => median(a.map((x, i) => (f(b[i]) / f(x) - 1) * 100));
    let worst = -Infinity;
    const rows = [];
    for (const label of ['sbk-pack -o -', 'sbk-send', 'sbk-unpack --verify']) {
      const runs = S.f[label];
      if (!runs) continue;
      const off = runs['--no-progress'];
      const on = runs['--progress'];
      const n = Math.min(off.length, on.length);
      const wallCost = paired(off.slice(0, n), on.slice(0, n), (r) => r.wall);
      const cpuCost = paired(off.slice(0, n), on.slice(0, n), cpuOf);
      const drawn = on.filter((r) => r.drawing);
      const drawPct = drawn.length ? median(drawn.map((r) => (100 * r.drawing.ms) / (r.wall * 1000))) : NaN;
      const draws = drawn.length ? median(drawn.map((r) => r.drawing.draws)) : NaN;
      worst = Math.max(worst, drawPct);
      rows.push([label, n, fmtS(med(off)), fmtS(med(on)), pct(wallCost), pct(cpuCost), `${draws} in ${fmtS(med(on))} s`, `${drawPct.toFixed(2)}%`]);
    }
    L.push(table(['', 'pairs', 'wall s without', 'with --progress', 'A/B wall', 'A/B CPU', 'redraws', 'drawing cost'], rows), '');
    if (S.f.estimate) {
      L.push(
        'sbk-send\'s size estimate, for comparison (CPU seconds of `btrfs send --no-data` and of `btrfs send` of each volume of ' +
          'c1\'s Full, to /dev/null): it is asked for only when the status line is drawn and the volume has been sending for 3 s, ' +
          'at the lowest priority.',
        '',
        table(
          ['volume', 'btrfs send CPU s', '--no-data CPU s', 'ratio'],
          S.f.estimate.map((e) => [e.volume, e.send.toFixed(2), e.noData.toFixed(2), e.send > 0 ? `${((100 * e.noData) / e.send).toFixed(0)}%` : '–']),
        ),
        '',
      );
    }
    targets.push(['progress cost: time spent drawing (worst stage)', `${worst.toFixed(2)}%`, '< 1%', yes(worst < 1)]);
  }

  if (S.s) L.push(...objectStorageReport(S.s));
  // (g)
  if (S.g) {
    L.push('## (g) Changelog (bench/changelog.mjs)', '');
    L.push(`A one-file change in a volume of ${S.g.files} files, ${S.g.runs} runs each.`, '');
    L.push(
      table(
        ['method', 'median ms', 'min ms'],
        [
          ['send stream (--no-data)', S.g.stream.medianMs, S.g.stream.minMs],
          ['rsync dry run', S.g.rsync.medianMs, S.g.rsync.minMs],
        ],
      ),
      '',
      `rsync / send stream: ${S.g.rsyncOverStream}×.`,
      '',
    );
    if (S.g.first) {
      const f = S.g.first;
      L.push(
        `A first Full's changelog (every path of the ${f.files} added), ${f.runs} runs each: sbk-changelog walks the snapshot.`,
        '',
        table(
          ['way', 'median ms', 'min ms'],
          [
            ['readdir walk (used)', f.walk.medianMs, f.walk.minMs],
            ['send stream (--no-data, no parent)', f.stream.medianMs, f.stream.minMs],
            ['rsync dry run', f.rsync.medianMs, f.rsync.minMs],
          ],
        ),
        '',
      );
    }
  }

  if (S.h) L.push(...S.h.markdown); // (h), rendered by bench/freeze.mjs
  if (S.i) L.push(...fixedCostReport(S.i, targets));
  if (S.z) L.push('## (z) zstd archives (bench/zstd.mjs)', '', S.z.markdown, '');
  if (results.profile) {
    L.push('## CPU profiles', '', 'See bench/PROFILE.md (written by `--profile`).', '');
  }
  if (results.notes.length) L.push('## Warnings of this run', '', ...results.notes.map((n) => `- ${n}`), '');

  const head = ['## Targets', '', table(['target', 'measured', 'goal', 'met'], targets), ''];
  return [...L.slice(0, L.indexOf('## Machine')), ...head, ...L.slice(L.indexOf('## Machine'))].join('\n');
}

function profileReport() {
  const L = ['# CPU profiles of the JS stages', ''];
  L.push(
    `Written by \`node bench/run.js --profile\` on ${new Date().toISOString()}. Main-thread self time from \`node --cpu-prof\`; ` +
      'deflate and inflate run on the libuv thread pool and do not appear here (the main thread is then idle: "(idle)" / "(program)"). ' +
      'Samples are wall-clock: a main thread that waits in a system call or is descheduled while the pool threads use both cores is ' +
      'counted in the native function it is in (`writeBuffer`: writing stdout or a pipe; `read`: reading a file on the pool; ' +
      '`processChunk`: handing a block to zlib), so those rows are mostly waiting, not work. sbk-send writes its tar to a file here.',
    '',
  );
  for (const p of results.profile) {
    L.push(`## ${p.label} (${fmtS(p.wall)} s wall, ${(p.summary.totalMs / 1000).toFixed(2)} s profiled)`, '');
    L.push(table(['self ms', '%', 'function'], p.summary.functions.map((f) => [f.ms.toFixed(0), f.pct.toFixed(1), `\`${f.name}\``])), '');
    L.push(table(['self ms', '%', 'file'], p.summary.files.map((f) => [f.ms.toFixed(0), f.pct.toFixed(1), `\`${f.name}\``])), '');
  }
  return L.join('\n');
}

// ---- main ----------------------------------------------------------------------------------------
const have = (cmd) => {
  try {
    execFileSync('bash', ['-c', `command -v ${cmd}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};

async function preflight() {
  if (process.getuid?.() !== 0) throw new Error('the benchmark needs root (loop mounts, btrfs send/receive): run it with sudo');
  const missing = [];
  if (!have('pigz')) missing.push('pigz');
  if (!existsSync(TIME)) missing.push('time');
  if (!have('mkfs.btrfs')) missing.push('btrfs-progs');
  if (!have('script')) missing.push('bsdutils');
  if (missing.length) {
    log(`installing ${missing.join(' ')} (apt-get)`);
    execFileSync('bash', ['-c', `apt-get install -y ${missing.join(' ')} || (apt-get update && apt-get install -y ${missing.join(' ')})`], {
      stdio: 'inherit',
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    });
  }
  log('building dist/ (npm run build: tsc, then the bundles the binaries load)');
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: ROOT, stdio: 'inherit' });
}

async function main() {
  const t0 = Date.now();
  const cpu0 = machineCpu();
  const loadStart = loadavg();
  await preflight();
  TIMEDIR = mkdtempSync(path.join(os.tmpdir(), 'sbk-bench-time-'));
  cleanupSteps.push(async () => rmSync(TIMEDIR, { recursive: true, force: true }));
  const meta = { date: new Date().toISOString(), argv, quick: QUICK, rounds: ROUNDS, machine: machineInfo(), loadStart };

  // First, while nothing of ours is being written back in the background.
  if (ONLY.has('e')) await sectionHelp();
  if (ONLY.has('i')) results.sections.i = await sectionFixedCost({ rounds: HELP_RUNS, log, registerCleanup: (f) => cleanupSteps.push(async () => f()) });

  const needSandbox = ['a', 'b', 'c', 'd', 'f', 's'].some((s) => ONLY.has(s)) || PROFILE;
  if (needSandbox) {
    const sb = await makeSandbox(QUICK ? 8 : 24);
    ENV = { SBK_LXC_DIR: sb.lxcDir, SBK_BACKUP_DIR: sb.backupDir };
    log(`sandbox ${sb.mnt}; filling c1 from /usr`);
    const seen = new Set();
    meta.content = {};
    await makeContainerDir(sb, 'c1', async (v, dst) => {
      await sh(`btrfs -q subvolume create ${q(dst)}`);
      meta.content[v] = await copyBudget(SOURCES[v], dst, BUDGET[v] * MiB, seen);
    });
    await sh('sync');
    log(`c1: ${Object.entries(meta.content).map(([v, c]) => `${v} ${fmtMiB(c.bytes)} MiB`).join(', ')}`);

    // The Full every incremental below is made against, stored by sbk and by the baseline.
    await waitNextSecond();
    const f0 = await pipeline([T('sbk-snap', `${BIN('sbk-snap')} --full c1`), T('sbk-send', BIN('sbk-send')), T('sbk-pack', BIN('sbk-pack'))]);
    const f0Name = storedNames(f0.stdout)[0];
    const f0Archive = path.join(sb.backupDir, `${f0Name}.tar.gz`);
    const parentSet = path.join(sb.backupDir, 'c1', f0Name.replace(/^c1_/, ''));
    await sh(`{ ${VOLUMES.map((v) => `btrfs send -q ${q(path.join(parentSet, v))}`).join(' && ')}; } | pigz -6 -p2 > ${q(path.join(sb.work, 'base-full.gz'))}`);
    log(`Full ${f0Name} stored (${fmtS(f0.wall)} s); applying the incremental change`);
    meta.change = await applyChange(path.join(sb.lxcDir, 'c1'));
    await sh('sync');

    if (ONLY.has('a') || ONLY.has('f') || PROFILE) {
      await waitNextSecond();
      const rec = path.join(sb.scratch, 'full.ndjson');
      const tar = path.join(sb.scratch, 'full.tar');
      await sh(`${BIN('sbk-snap')} --full c1 > ${q(rec)}`);
      await sh(`${BIN('sbk-send')} < ${q(rec)} > ${q(tar)}`);
      const setName = JSON.parse(readFileSync(rec, 'utf8').split('\n')[0]).name;
      if (ONLY.has('a')) await sectionCompress(sb, tar);
      if (ONLY.has('f')) await sectionProgress(sb, rec, f0Archive);
      if (PROFILE) await sectionProfile(sb, rec, f0Archive);
      await rm(tar, { force: true });
      await dropBackup(sb, setName);
    }
    if (ONLY.has('b')) await sectionBackup(sb, parentSet);
    if (ONLY.has('c')) {
      if (!ONLY.has('b')) {
        // The incremental to restore, made untimed.
        await waitNextSecond();
        await sh(`${BIN('sbk-snap')} c1 | ${BIN('sbk-send')} | ${BIN('sbk-pack')}`);
        const snapDir = path.join(sb.work, 'c-snaps');
        await mkdir(snapDir);
        await sh(VOLUMES.map((v) => `btrfs -q subvolume snapshot -r ${q(path.join(sb.lxcDir, 'c1', v))} ${q(path.join(snapDir, v))}`).join(' && '));
        await sh(
          `{ ${VOLUMES.map((v) => `btrfs send -q -p ${q(path.join(parentSet, v))} ${q(path.join(snapDir, v))}`).join(' && ')}; } | pigz -6 -p2 > ${q(path.join(sb.work, 'base-inc.gz'))}`,
        );
      }
      await sh('sync');
      await sectionRestore(sb);
    }
    if (ONLY.has('d')) {
      await sh('sync');
      await sectionBig(sb);
    }
    if (ONLY.has('s')) results.sections.s = await benchObjectStorage(f0Archive, { rounds: ROUNDS, log });
  }
  if (ONLY.has('g')) await sectionChangelog();
  if (ONLY.has('h')) results.sections.h = JSON.parse((await sh(`node ${q(path.join(ROOT, 'bench', 'freeze.mjs'))} ${QUICK ? 8 : 20}`)).stdout.trim().split('\n').pop());
  if (ONLY.has('z')) results.sections.z = JSON.parse((await sh(`node ${q(path.join(ROOT, 'bench', 'zstd.mjs'))}${QUICK ? ' --quick' : ''} --rounds ${ROUNDS}`)).stdout);
  if (ONLY.has('r')) results.sections.r = JSON.parse((await sh(`node ${q(path.join(ROOT, 'bench', 'replay.mjs'))}${QUICK ? ' --quick' : ''}`)).stdout.trim().split('\n').pop());

  const cpu1 = machineCpu();
  meta.loadEnd = loadavg();
  meta.seconds = (Date.now() - t0) / 1000;
  meta.busyPct = (100 * (cpu1.busy - cpu0.busy)) / Math.max(1e-9, cpu1.total - cpu0.total);
  if (Object.keys(results.sections).length === 0 && results.profile) {
    // `--profile --only none`: the profiles alone; RESULTS.md stays as it is.
    writeFileSync(path.join(ROOT, 'bench', 'PROFILE.md'), profileReport() + '\n');
    log('wrote bench/PROFILE.md');
    return;
  }
  writeResults(meta);
  log(`wrote bench/RESULTS.md (${fmtS(meta.seconds / 60)} min)`);
}

function writeResults(meta) {
  const file = path.join(ROOT, 'bench', 'RESULTS.md');
  let kept = '';
  if (existsSync(file)) {
    const old = readFileSync(file, 'utf8');
    const i = old.indexOf(NOTES_MARK);
    if (i >= 0) kept = old.slice(i);
  }
  writeFileSync(file, report(meta) + '\n' + (kept || NOTES_MARK + '\n'));
  writeFileSync(path.join(ROOT, 'bench', 'results.json'), JSON.stringify({ meta, results }, null, 1) + '\n');
  if (results.profile) writeFileSync(path.join(ROOT, 'bench', 'PROFILE.md'), profileReport() + '\n');
}

if (flag('--report-only')) {
  // Re-renders RESULTS.md from bench/results.json (after editing the report code).
  const saved = JSON.parse(readFileSync(path.join(ROOT, 'bench', 'results.json'), 'utf8'));
  Object.assign(results, saved.results);
  writeResults(saved.meta);
  process.exit(0);
}

try {
  await main();
} catch (err) {
  process.exitCode = 1;
  log(`failed: ${err?.stack ?? err}`);
} finally {
  await cleanup();
}
