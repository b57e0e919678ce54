#!/usr/bin/env node
// The fixed cost of a backup (bench section i; `node bench/fixed-cost.mjs [rounds]` runs it
// alone and prints JSON): an incremental backup where nothing changed,
// `sbk-snap c1 | sbk-changelog | sbk-send | sbk-pack` (default --keep-snapshots, so it prunes one
// old set as a nightly run does), and every binary's `--help`, each beside a bare `node -e 0`
// measured in the same rounds (interleaved, order rotated), so that the ratios hold on a noisy
// machine. CPU is user + sys of every process of the run (getrusage of the waited children, from
// /usr/bin/time around `bash -c PIPE`); wall is from spawn to exit. With strace installed, one
// extra untimed run counts the processes each stage starts. Needs root (a loop-mounted BTRFS
// image of 256 MiB, unmounted and deleted at the end, also on failure).
import { spawn, execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = (n) => path.join(ROOT, 'bin', n);
const TIME = '/usr/bin/time';
const VOLUMES = ['rootfs', 'home', 'opt', 'var'];
const q = (s) => `'${String(s).replace(/'/g, `'\\''`)}'`;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? NaN : n % 2 ? s[n >> 1] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const sh = (script, env = {}) => execFileSync('bash', ['-o', 'pipefail', '-c', script], { env: { ...process.env, ...env }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

/** Runs `argv` under /usr/bin/time: { wallMs, cpuMs } (CPU of it and every child it waited for). */
function timed(argv, env, timeFile) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const c = spawn(TIME, ['-f', '%U %S', '-o', timeFile, ...argv], { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
    let err = '';
    c.stderr.on('data', (d) => (err += d));
    c.on('error', reject);
    c.on('close', (code) => {
      const wallMs = performance.now() - t0;
      if (code !== 0) return reject(new Error(`${argv.join(' ')} exited ${code}: ${err.slice(-2000)}`));
      const [u, s] = readFileSync(timeFile, 'utf8').trim().split('\n').pop().trim().split(/\s+/).map(Number);
      resolve({ wallMs, cpuMs: (u + s) * 1000 });
    });
  });
}

/** A small container on a fresh loop-mounted BTRFS image; `cleanup()` unmounts and deletes it. */
function makeSandbox() {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sbk-bench-fixed-'));
  const mnt = path.join(dir, 'mnt');
  mkdirSync(mnt);
  let mounted = false;
  const cleanup = () => {
    if (mounted) {
      try {
        execFileSync('umount', [mnt], { stdio: 'ignore' });
      } catch {
        execFileSync('umount', ['-l', mnt], { stdio: 'ignore' });
      }
      mounted = false;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    const img = path.join(dir, 'btrfs.img');
    sh(`truncate -s 256M ${q(img)} && mkfs.btrfs -q -f ${q(img)} >/dev/null 2>&1`);
    sh(`mount -o loop ${q(img)} ${q(mnt)}`);
    mounted = true;
    const lxcDir = path.join(mnt, 'lxc');
    const cdir = path.join(lxcDir, 'c1');
    sh(`btrfs -q subvolume create ${q(lxcDir)} && mkdir ${q(cdir)}`);
    for (const v of VOLUMES) {
      sh(`btrfs -q subvolume create ${q(path.join(cdir, v))} && mkdir -p ${q(path.join(cdir, v, 'etc'))} && cp -a /etc/os-release /etc/passwd ${q(path.join(cdir, v, 'etc'))}/`);
    }
    writeFileSync(
      path.join(cdir, 'config'),
      [
        `lxc.rootfs.path = btrfs:${cdir}/rootfs`,
        ...VOLUMES.filter((v) => v !== 'rootfs').map((v) => `lxc.mount.entry = ${cdir}/${v} ${v} none bind,rw 0 0`),
        'lxc.uts.name = c1',
        'lxc.net.0.type = empty',
        '',
      ].join('\n'),
    );
    writeFileSync(path.join(cdir, 'fstab'), '');
    return { dir, lxcDir, env: { SBK_LXC_DIR: lxcDir, SBK_BACKUP_DIR: path.join(lxcDir, 'backups') }, cleanup };
  } catch (err) {
    cleanup();
    throw err;
  }
}

const PIPE = `${q(BIN('sbk-snap'))} c1 | ${q(BIN('sbk-changelog'))} -q | ${q(BIN('sbk-send'))} | ${q(BIN('sbk-pack'))} -q > /dev/null`;

/** Backups are named by unix second: never two in one second. */
const nextSecond = () => new Promise((r) => setTimeout(r, 1050 - (Date.now() % 1000)));

/** The programs one run of the pipe starts, counted by name (strace), or undefined without strace. */
function countProcesses(sb, dir) {
  try {
    execFileSync('bash', ['-c', 'command -v strace'], { stdio: 'ignore' });
  } catch {
    return undefined;
  }
  const out = path.join(dir, 'exec.trace');
  // -z: successful calls only (not each try along PATH), each on its own line.
  sh(`strace -f -qq -z -s 256 -e trace=execve -e signal=none -o ${q(out)} bash -o pipefail -c ${q(PIPE)}`, sb.env);
  const counts = {};
  for (const line of readFileSync(out, 'utf8').split('\n')) {
    const m = /^\d+ +execve\("([^"]+)", \[(.*?)\]/.exec(line);
    if (!m) continue;
    const argv = m[2].split(', ').map((a) => a.replace(/^"|"\.*$/g, ''));
    let name = path.basename(m[1]);
    if (name.startsWith('sbk-')) continue; // the launcher script itself (its interpreter is counted)
    if (name === 'node') name = `node ${path.basename(argv[1] ?? '')}`;
    else if (name === 'btrfs') name = `btrfs ${argv.slice(1, argv[1] === 'subvolume' ? 3 : 2).join(' ')}`;
    counts[name] = (counts[name] ?? 0) + 1;
  }
  delete counts.bash;
  return counts;
}

/**
 * Section h: `rounds` rounds of node -e 0, the no-change incremental and every --help,
 * interleaved. Returns medians (ms) and the ratios to node -e 0.
 */
export async function sectionFixedCost({ rounds = 10, log = (m) => process.stderr.write(m + '\n'), registerCleanup = (_f) => {} } = {}) {
  const { VERBS } = await import(new URL('../dist/cli/verbs.js', import.meta.url).href);
  const sb = makeSandbox();
  registerCleanup(sb.cleanup); // an interrupted bench unmounts it too
  try {
    const tf = path.join(sb.dir, 'time');
    // The Full every incremental is made on, then one incremental: the steady state.
    sh(`${PIPE.replace(' c1 ', ' --full c1 ')}`, sb.env);
    await nextSecond();
    sh(PIPE, sb.env);
    const contenders = {
      'node -e 0': () => timed([process.execPath, '-e', '0'], {}, tf),
      'no-change incremental': async () => {
        await nextSecond();
        return timed(['bash', '-o', 'pipefail', '-c', PIPE], sb.env, tf);
      },
      ...Object.fromEntries(VERBS.map((v) => [`${v.name} --help`, () => timed([BIN(v.name), '--help'], {}, tf)])),
    };
    const names = Object.keys(contenders);
    const runs = Object.fromEntries(names.map((n) => [n, []]));
    for (let r = 0; r < rounds; r++) {
      for (let i = 0; i < names.length; i++) {
        const n = names[(i + r) % names.length];
        runs[n].push(await contenders[n]());
      }
      log(`(i) fixed cost, round ${r + 1}/${rounds}: incremental ${runs['no-change incremental'].at(-1).cpuMs.toFixed(0)} ms CPU, node -e 0 ${runs['node -e 0'].at(-1).cpuMs.toFixed(0)} ms`);
    }
    const m = Object.fromEntries(
      names.map((n) => [n, { wallMs: median(runs[n].map((x) => x.wallMs)), cpuMs: median(runs[n].map((x) => x.cpuMs)), runs: runs[n].length }]),
    );
    const node = m['node -e 0'];
    const inc = m['no-change incremental'];
    await nextSecond();
    const processes = countProcesses(sb, sb.dir);
    return {
      date: new Date().toISOString(),
      rounds,
      load: readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' '),
      node,
      incremental: { ...inc, cpuRatio: inc.cpuMs / node.cpuMs, wallRatio: inc.wallMs / node.wallMs },
      help: Object.fromEntries(VERBS.map((v) => [v.name, { ...m[`${v.name} --help`], wallRatio: m[`${v.name} --help`].wallMs / node.wallMs }])),
      processes,
    };
  } finally {
    sb.cleanup();
  }
}

/**
 * The targets: the incremental's CPU at most half of what it was (its ratio to node -e 0 before
 * the work on it, commit c46fdbb: 21.2 and 22.0 in two runs of this file, load 20 on 2 cores),
 * every --help within 2× node -e 0.
 */
export const BEFORE_CPU_RATIO = 21.6;

/** The report's section i (markdown lines), and its rows of the targets table. */
export function fixedCostReport(h, targets) {
  const f0 = (x) => x.toFixed(0);
  const f2 = (x) => x.toFixed(2);
  const L = ['## (i) The fixed cost of a backup (bench/fixed-cost.mjs)', ''];
  L.push(
    `An incremental where nothing changed (\`sbk-snap c1 | sbk-changelog | sbk-send | sbk-pack\`, a container of four small volumes, ` +
      `pruning one old snapshot set as a nightly run does) and every \`--help\`, beside a bare \`node -e 0\`: ${h.rounds} rounds, ` +
      `interleaved, medians. CPU is user + sys of every process of the run (/usr/bin/time around the whole pipe). ` +
      `${h.date ? `Measured ${h.date}; ` : ''}load at the end: ${h.load}.`,
    '',
  );
  const rows = [
    ['`node -e 0`', f0(h.node.wallMs), f0(h.node.cpuMs), '1', '1'],
    ['no-change incremental', f0(h.incremental.wallMs), f0(h.incremental.cpuMs), f2(h.incremental.wallRatio), f2(h.incremental.cpuRatio)],
    ...Object.entries(h.help).map(([k, v]) => [`\`${k} --help\``, f0(v.wallMs), f0(v.cpuMs), f2(v.wallRatio), f2(v.cpuMs / h.node.cpuMs)]),
  ];
  L.push(table(['', 'wall ms', 'CPU ms', 'wall / node -e 0', 'CPU / node -e 0'], rows), '');
  if (h.processes) {
    L.push('Processes one run of the pipe starts (strace):', '');
    L.push(table(['program', 'count'], Object.entries(h.processes).sort((a, b) => b[1] - a[1]).map(([k, v]) => [`\`${k}\``, String(v)])), '');
  }
  const worst = Math.max(...Object.values(h.help).map((v) => v.wallRatio));
  const worstCpu = Math.max(...Object.values(h.help).map((v) => v.cpuMs / h.node.cpuMs));
  const yes = (ok) => (ok ? 'yes' : '**no**');
  targets.push([
    'no-change incremental, CPU / `node -e 0`',
    f2(h.incremental.cpuRatio),
    `≤ ${f2(BEFORE_CPU_RATIO / 2)} (half of ${BEFORE_CPU_RATIO} before)`,
    yes(h.incremental.cpuRatio <= BEFORE_CPU_RATIO / 2),
  ]);
  // On a loaded machine a 0.1 s job's wall time is mostly waiting for a core: CPU is the
  // steadier measure of the two, both are shown.
  targets.push(['--help, slowest binary / `node -e 0` (CPU; wall)', `${f2(worstCpu)}; ${f2(worst)}`, '≤ 2', yes(worstCpu <= 2)]);
  return L;
}

function table(head, rows) {
  const row = (cells) => `| ${cells.map((c) => String(c).replace(/\|/g, '\\|')).join(' | ')} |`;
  return [row(head), row(head.map((_, i) => (i === 0 ? '---' : '---:'))), ...rows.map(row)].join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench/fixed-cost.mjs needs root (a loop-mounted BTRFS image)\n');
    process.exit(2);
  }
  if (!existsSync(new URL('../dist/cli/verbs.js', import.meta.url))) {
    process.stderr.write('build first: npm run build\n');
    process.exit(2);
  }
  let cleanup = () => {};
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'])
    process.on(sig, () => {
      cleanup();
      process.exit(130);
    });
  const r = await sectionFixedCost({ rounds: Number(process.argv[2] ?? 10), registerCleanup: (f) => (cleanup = f) });
  process.stdout.write(JSON.stringify(r, null, 1) + '\n');
}
