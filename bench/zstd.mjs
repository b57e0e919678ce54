#!/usr/bin/env node
// Benchmark of zstd archives (not a test; as root, after `npm run build`): a loop-mounted BTRFS
// sandbox with a container filled from this machine's /usr, then, side by side in one run,
// alternating, several rounds, medians (each stage timed with /usr/bin/time: wall, CPU, peak RSS):
//   Full backup   sbk-snap | sbk-send | sbk-pack --compress zstd   vs  btrfs send | zstd -3 -T2 > file
//                 vs sbk's gzip backup (sbk-pack)  vs  a bare btrfs send > /dev/null (the source's limit)
//                 vs btrfs send | node | node | zstd -3 -T2 (bench/relay.mjs: the floor of sbk's shape)
//   restore       sbk-plan | sbk-unpack of a zstd chain (Full + incremental)  vs  zstd -dc | btrfs receive
//                 vs zstd -dc | node | btrfs receive (the floor of sbk's shape)
// and the sizes. Prints one JSON object on stdout: the numbers and a `markdown` section that
// bench/run.js puts into bench/RESULTS.md (section z); alone, `--write` puts it in bench/zstd.md.
// Usage: node bench/zstd.mjs [--quick] [--rounds N]
// The image is unmounted and deleted at the end, on failure and on SIGINT/SIGTERM.
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { mkdir, readdir, lstat, copyFile, writeFile, appendFile, rm, stat, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { SOURCES, VOLUMES, budget, copyBudget } from './content.mjs';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = (n) => path.join(ROOT, 'bin', n);
const MiB = 1024 * 1024;
const argv = process.argv.slice(2);
const QUICK = argv.includes('--quick');
const ROUNDS = Math.max(1, Number(argv[argv.indexOf('--rounds') + 1] || 3) || 3);
const BUDGET = budget(QUICK);
const TARGETS = { vsZstd: 1.1, vsGzip: 3, restore: 1.15, rssMiB: 150 };
const RELAY = path.join(ROOT, 'bench', 'relay.mjs');
const RELAYS_FULL = 'btrfs send | node | node | zstd -3 -T2';
const RELAY_RESTORE = 'zstd -dc | node | btrfs receive';

const log = (m) => process.stderr.write(`[zstd bench ${new Date().toISOString().slice(11, 19)}] ${m}\n`);
const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const children = new Set();
const cleanups = [];

function sh(script, env = {}) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn('bash', ['-o', 'pipefail', '-c', script], { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => (stdout += c));
    child.stderr.on('data', (c) => (stderr = (stderr + c).slice(-5000)));
    child.on('error', reject);
    child.on('close', (code, sig) => {
      children.delete(child);
      if (code !== 0 || sig) reject(new Error(`failed (${sig ?? code}): ${script}\n${stderr}`));
      else resolve({ ms: performance.now() - t0, stdout, stderr });
    });
  });
}

let TIMEDIR = '';
let MNT = ''; // the sandbox's BTRFS
let seq = 0;
/** A stage under /usr/bin/time (wall, user, sys, peak RSS in KiB). */
function T(name, cmd) {
  const file = path.join(TIMEDIR, `${++seq}.time`);
  return { name, file, text: `/usr/bin/time -f '%e %U %S %M' -o ${q(file)} ${cmd}` };
}
async function pipeline(stages, env) {
  const r = await sh(stages.map((s) => s.text).join(' | '), env);
  const per = {};
  for (const s of stages) {
    const [wall, user, sys, rss] = readFileSync(s.file, 'utf8').trim().split('\n').pop().trim().split(/\s+/).map(Number);
    per[s.name] = { wall, cpu: user + sys, rssKiB: rss };
  }
  return { wall: r.ms / 1000, stages: per, stdout: r.stdout };
}


async function removeSubvolumesIn(dir) {
  if (!existsSync(dir)) return;
  const subs = [];
  for (const n of await readdir(dir)) if ((await lstat(path.join(dir, n))).ino === 256) subs.push(path.join(dir, n));
  if (subs.length) await sh(`btrfs -q subvolume delete ${subs.map(q).join(' ')}`);
  await rm(dir, { recursive: true, force: true });
  // The kernel frees deleted subvolumes in the background, and writes dirty data back later: both
  // would land in the next contender's time. Wait for them here.
  await sh(`btrfs subvolume sync ${q(MNT)} && sync`);
}

const nextSecond = () => new Promise((r) => setTimeout(r, 1100 - (Date.now() % 1000)));

async function setup() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sbk-bench-zstd-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const image = path.join(dir, 'btrfs.img');
  const mnt = (MNT = path.join(dir, 'mnt'));
  await mkdir(mnt);
  await sh(`truncate -s ${QUICK ? 3 : 6}G ${q(image)} && mkfs.btrfs -q -f ${q(image)} && mount -o loop ${q(image)} ${q(mnt)}`);
  cleanups.push(() => {
    try {
      execFileSync('umount', [mnt], { stdio: 'ignore' });
    } catch {
      execFileSync('umount', ['-l', mnt], { stdio: 'ignore' });
    }
  });
  TIMEDIR = path.join(dir, 'times');
  await mkdir(TIMEDIR);
  const lxcDir = path.join(mnt, 'lxc');
  const work = path.join(mnt, 'work');
  await sh(`btrfs -q subvolume create ${q(lxcDir)} && btrfs -q subvolume create ${q(work)}`);
  const cdir = path.join(lxcDir, 'c1');
  await mkdir(cdir);
  const seen = new Set();
  let bytes = 0;
  for (const v of VOLUMES) {
    await sh(`btrfs -q subvolume create ${q(path.join(cdir, v))}`);
    bytes += (await copyBudget(SOURCES[v], path.join(cdir, v), BUDGET[v] * MiB, seen)).bytes;
  }
  const conf = [
    `lxc.rootfs = ${cdir}/rootfs`,
    `lxc.rootfs.backend = btrfs`,
    ...VOLUMES.slice(1).map((v) => `lxc.mount.entry = ${cdir}/${v} ${v} none bind,rw 0 0`),
    `lxc.mount = ${cdir}/fstab`,
    `lxc.utsname = c1`,
    '',
  ];
  await writeFile(path.join(cdir, 'config'), conf.join('\n'));
  await writeFile(path.join(cdir, 'fstab'), '');
  await sh('sync');
  const env = { SBK_LXC_DIR: lxcDir, SBK_BACKUP_DIR: path.join(lxcDir, 'backups') };
  return { dir, mnt, lxcDir, backupDir: env.SBK_BACKUP_DIR, work, cdir, env, bytes };
}

/** Removes one sbk backup (archive, sidecar, snapshot set), so that the next run starts alike. */
async function dropBackup(sb, stored) {
  const m = /^c1_(\d+(?:_Full)?)\.tar\.(gz|zst)$/.exec(path.basename(stored));
  await rm(stored, { force: true });
  await rm(stored.replace(/\.tar\.(gz|zst)$/, '_changelog.txt'), { force: true });
  await removeSubvolumesIn(path.join(sb.backupDir, 'c1', m[1]));
}

async function alternate(label, contenders, after) {
  const names = Object.keys(contenders);
  const runs = Object.fromEntries(names.map((n) => [n, []]));
  for (let r = 0; r < ROUNDS; r++)
    for (let i = 0; i < names.length; i++) {
      const n = names[(i + r) % names.length];
      const res = await contenders[n]();
      runs[n].push(res);
      log(`${label} ${r + 1}/${ROUNDS}: ${n} ${res.wall.toFixed(2)} s`);
      await after?.(n, r, res);
    }
  return runs;
}

async function main() {
  const sb = await setup();
  log(`container of ${(sb.bytes / MiB).toFixed(0)} MiB`);
  const snaps = path.join(sb.work, 'snaps');
  const sbkBackup = (codec, full) => async () => {
    await nextSecond();
    const r = await pipeline(
      [T('sbk-snap', `${BIN('sbk-snap')}${full ? ' --full' : ''} c1`), T('sbk-send', BIN('sbk-send')), T('sbk-pack', `${BIN('sbk-pack')} --compress ${codec}`)],
      sb.env,
    );
    r.file = r.stdout.trim();
    r.size = (await stat(r.file)).size;
    return r;
  };
  const sends = (parent) => VOLUMES.map((v) => `btrfs send -q ${parent ? `-p ${q(path.join(parent, v))} ` : ''}${q(path.join(snaps, v))}`).join(' && ');
  const takeSnaps = () => VOLUMES.map((v) => `btrfs -q subvolume snapshot -r ${q(path.join(sb.cdir, v))} ${q(path.join(snaps, v))}`).join(' && ');
  const byHand = (sink, name) => async () => {
    await mkdir(snaps, { recursive: true });
    const r = await pipeline([T('snapshots + btrfs send', `bash -c ${q(`${takeSnaps()} && ${sends()}`)}`), T(name, sink)]);
    if (sink.includes('base.zst')) r.size = (await stat(path.join(sb.work, 'base.zst'))).size;
    return r;
  };
  let keptFull;
  const full = await alternate(
    'Full backup',
    {
      'sbk zstd': sbkBackup('zstd', true),
      'btrfs send | zstd -3 -T2': byHand(`zstd -q -3 -T2 > ${q(path.join(sb.work, 'base.zst'))}`, 'zstd -3 -T2'),
      'sbk gzip': sbkBackup('gzip', true),
      'btrfs send > /dev/null': byHand('cat > /dev/null', 'cat'),
      // sbk's shape with no work in it: the bytes cross two Node processes (sbk-send's and sbk-pack's places).
      [RELAYS_FULL]: byHand(`bash -c ${q(`node ${q(RELAY)} | node ${q(RELAY)} | zstd -q -3 -T2 > ${q(path.join(sb.work, 'relay.zst'))}`)}`, 'node | node | zstd -3 -T2'),
    },
    async (n, r, res) => {
      if (n.startsWith('sbk')) {
        if (n === 'sbk zstd' && r === ROUNDS - 1) keptFull = res.file;
        else await dropBackup(sb, res.file);
      } else if (n === 'btrfs send | zstd -3 -T2' && r === ROUNDS - 1) {
        await sh(`mv ${q(path.join(sb.work, 'base.zst'))} ${q(path.join(sb.work, 'base-full.zst'))} && mv ${q(snaps)} ${q(snaps + '-full')}`);
      } else await removeSubvolumesIn(snaps);
    },
  );

  // An incremental of both kinds against the kept Fulls, after the same change.
  log('incremental (for the restore)');
  for (const v of VOLUMES) await appendFile(path.join(sb.cdir, v, 'changed.log'), 'x'.repeat(4 * MiB));
  await writeFile(path.join(sb.cdir, 'home', 'upload.bin'), (await readFile('/usr/bin/node').catch(() => Buffer.alloc(0))).subarray(0, 32 * MiB));
  const inc = await sbkBackup('zstd', false)();
  await mkdir(snaps, { recursive: true });
  await sh(`${takeSnaps()} && { ${sends(snaps + '-full')}; } | zstd -q -3 -T2 > ${q(path.join(sb.work, 'base-inc.zst'))}`);

  const d1 = path.join(sb.work, 'recv-full');
  const d2 = path.join(sb.work, 'recv-inc');
  const restore = await alternate(
    'restore',
    {
      'sbk-plan | sbk-unpack (zstd chain)': () => pipeline([T('sbk-plan', `${BIN('sbk-plan')} c1`), T('sbk-unpack', `${BIN('sbk-unpack')} --as r1`)], sb.env),
      'zstd -dc | btrfs receive': async () => {
        await mkdir(d1, { recursive: true });
        await mkdir(d2, { recursive: true });
        const t0 = performance.now();
        const s = [T('zstd -dc (Full)', `zstd -q -dc ${q(path.join(sb.work, 'base-full.zst'))}`), T('btrfs receive (Full)', `btrfs receive -q ${q(d1)}`)];
        const s2 = [T('zstd -dc (incr.)', `zstd -q -dc ${q(path.join(sb.work, 'base-inc.zst'))}`), T('btrfs receive (incr.)', `btrfs receive -q ${q(d2)}`)];
        // The incremental's parents are the Full's snapshots received into d1.
        await sh(`${s[0].text} | ${s[1].text} && ${s2[0].text} | ${s2[1].text}`);
        return { wall: (performance.now() - t0) / 1000, stages: {} };
      },
      // The same with sbk-unpack's place taken by a Node process that only passes the bytes on.
      [RELAY_RESTORE]: async () => {
        await mkdir(d1, { recursive: true });
        await mkdir(d2, { recursive: true });
        const t0 = performance.now();
        const one = (zst, d) => `zstd -q -dc ${q(path.join(sb.work, zst))} | node ${q(RELAY)} | btrfs receive -q ${q(d)}`;
        await sh(`${one('base-full.zst', d1)} && ${one('base-inc.zst', d2)}`);
        return { wall: (performance.now() - t0) / 1000, stages: {} };
      },
    },
    async (n) => {
      if (n.startsWith('sbk')) await removeSubvolumesIn(path.join(sb.lxcDir, 'r1'));
      else {
        await removeSubvolumesIn(d2);
        await removeSubvolumesIn(d1);
      }
    },
  );
  return summarize(sb, full, restore, { full: keptFull, inc: inc.file });
}

function summarize(sb, full, restore, kept) {
  const w = (runs) => median(runs.map((r) => r.wall));
  const cpu = (runs) => median(runs.map((r) => Object.values(r.stages).reduce((a, s) => a + s.cpu, 0)));
  const rss = (runs) => Math.max(...runs.flatMap((r) => Object.values(r.stages).map((s) => s.rssKiB))) / 1024;
  /** Median CPU seconds of each stage: what the pipe costs, whatever the load of the machine. */
  const perStage = (runs) =>
    Object.fromEntries(Object.keys(runs[0].stages).map((k) => [k, { cpu: median(runs.map((r) => r.stages[k].cpu)), rssMiB: Math.max(...runs.map((r) => r.stages[k].rssKiB)) / 1024 }]));
  const F = Object.fromEntries(
    Object.entries(full).map(([n, runs]) => [n, { wall: w(runs), cpu: cpu(runs), rssMiB: rss(runs), size: runs.at(-1).size, stages: perStage(runs) }]),
  );
  const R = Object.fromEntries(Object.entries(restore).map(([n, runs]) => [n, { wall: w(runs), stages: Object.keys(runs[0].stages).length ? perStage(runs) : undefined }]));
  const sbkRestore = restore['sbk-plan | sbk-unpack (zstd chain)'];
  const ratios = {
    vsZstd: F['sbk zstd'].wall / F['btrfs send | zstd -3 -T2'].wall,
    vsGzip: F['sbk gzip'].wall / F['sbk zstd'].wall,
    vsBareSend: F['sbk zstd'].wall / F['btrfs send > /dev/null'].wall,
    restore: R['sbk-plan | sbk-unpack (zstd chain)'].wall / R['zstd -dc | btrfs receive'].wall,
    rssMiB: Math.max(F['sbk zstd'].rssMiB, rss(sbkRestore)),
    // What sbk's shape alone costs (Node processes passing the bytes), and sbk against that floor.
    floorFull: F[RELAYS_FULL].wall / F['btrfs send | zstd -3 -T2'].wall,
    vsFloorFull: F['sbk zstd'].wall / F[RELAYS_FULL].wall,
    floorRestore: R[RELAY_RESTORE].wall / R['zstd -dc | btrfs receive'].wall,
    vsFloorRestore: R['sbk-plan | sbk-unpack (zstd chain)'].wall / R[RELAY_RESTORE].wall,
  };
  const cell = (n) => n.replace(/\|/g, '\\|'); // a pipe inside a table cell
  const ok = (b) => (b ? 'met' : '**missed**');
  const s = (x) => x.toFixed(2);
  const mib = (b) => (b / MiB).toFixed(0);
  const L = [
    `Container: ${mib(sb.bytes)} MiB of files from /usr in 4 volumes; ${ROUNDS} rounds, medians; load average at the end ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')}.`,
    '',
    '| Full backup | wall s | CPU s | peak RSS MiB | output MiB |',
    '| --- | ---: | ---: | ---: | ---: |',
    ...Object.entries(F).map(([n, x]) => `| ${cell(n)} | ${s(x.wall)} | ${s(x.cpu)} | ${x.rssMiB.toFixed(0)} | ${x.size ? mib(x.size) : '-'} |`),
    '',
    'CPU seconds per stage (medians): ' +
      ['sbk zstd', 'btrfs send | zstd -3 -T2', 'sbk gzip']
        .map((n) => `${n}: ${Object.entries(F[n].stages).map(([k, x]) => `${k} ${s(x.cpu)}`).join(', ')}`)
        .join('; ') +
      '.',
    `CPU of the whole pipe, sbk zstd / by hand: ${(F['sbk zstd'].cpu / F['btrfs send | zstd -3 -T2'].cpu).toFixed(2)}×.`,
    '',
    '| restore Full + incremental | wall s |',
    '| --- | ---: |',
    ...Object.entries(R).map(([n, x]) => `| ${cell(n)} | ${s(x.wall)} |`),
    '',
    '| target | measured | |',
    '| --- | ---: | --- |',
    `| sbk zstd Full ≤ ${TARGETS.vsZstd}× \`btrfs send \\| zstd -3 -T2\` | ${ratios.vsZstd.toFixed(2)}× | ${ok(ratios.vsZstd <= TARGETS.vsZstd)} |`,
    `| sbk zstd Full ≥ ${TARGETS.vsGzip}× faster than sbk gzip | ${ratios.vsGzip.toFixed(2)}× | ${ok(ratios.vsGzip >= TARGETS.vsGzip)} |`,
    `| restore of a zstd chain ≤ ${TARGETS.restore}× \`zstd -dc \\| btrfs receive\` | ${ratios.restore.toFixed(2)}× | ${ok(ratios.restore <= TARGETS.restore)} |`,
    `| peak RSS of any sbk stage (zstd child included) ≤ ${TARGETS.rssMiB} MiB | ${ratios.rssMiB.toFixed(0)} MiB | ${ok(ratios.rssMiB <= TARGETS.rssMiB)} |`,
    `| sbk zstd Full / bare \`btrfs send > /dev/null\` (the source's limit) | ${ratios.vsBareSend.toFixed(2)}× | |`,
    `| the floor of sbk's shape, backup: \`${cell(RELAYS_FULL)}\` / \`btrfs send \\| zstd -3 -T2\` | ${ratios.floorFull.toFixed(2)}× | |`,
    `| sbk zstd Full / that floor | ${ratios.vsFloorFull.toFixed(2)}× | |`,
    `| the floor of sbk's shape, restore: \`${cell(RELAY_RESTORE)}\` / \`zstd -dc \\| btrfs receive\` | ${ratios.floorRestore.toFixed(2)}× | |`,
    `| sbk restore / that floor | ${ratios.vsFloorRestore.toFixed(2)}× | |`,
    '',
    `zstd archive sizes: Full ${mib(F['sbk zstd'].size)} MiB (gzip ${mib(F['sbk gzip'].size)} MiB, ${(F['sbk zstd'].size / F['sbk gzip'].size).toFixed(3)}×; bare zstd -3 ${mib(F['btrfs send | zstd -3 -T2'].size)} MiB).`,
  ];
  void kept;
  return { bench: 'zstd', date: new Date().toISOString(), rounds: ROUNDS, quick: QUICK, full: F, restore: R, ratios, targets: TARGETS, markdown: L.join('\n') };
}

async function cleanup() {
  for (const c of children) {
    try {
      process.kill(-c.pid, 'SIGTERM');
    } catch {
      /* gone */
    }
  }
  for (const f of cleanups.reverse()) {
    try {
      await f();
    } catch (err) {
      log(`cleanup: ${err.message}`);
    }
  }
}
for (const sig of ['SIGINT', 'SIGTERM'])
  process.on(sig, () => {
    cleanup().finally(() => {
      process.exitCode = 130;
    });
  });

try {
  const result = await main();
  process.stdout.write(JSON.stringify(result) + '\n');
  if (argv.includes('--write')) writeFileSync(path.join(ROOT, 'bench', 'zstd.md'), result.markdown + '\n');
} catch (err) {
  log(err.stack ?? String(err));
  process.exitCode = 1;
} finally {
  await cleanup();
}
