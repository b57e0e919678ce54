// Benchmark (not a test): changelog of a one-file change in a volume of 50,000 files, by the
// send-stream method and by the rsync method; then a first Full's changelog (every path added)
// by each method and by a plain readdir walk. Needs root; uses a loop-mounted BTRFS image.
// Usage: node bench/changelog.mjs [files=50000] [runs=7]   (after `npm run build`)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, appendFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { changesBetween, changesByStream, changesByRsync } from '../dist/stages/changelog/changelog.js';

const files = Number(process.argv[2] ?? 50000);
const runs = Number(process.argv[3] ?? 7);
const sh = (cmd, ...args) => execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'inherit'] });
const dir = mkdtempSync(path.join(os.tmpdir(), 'sbk-bench-'));
const img = path.join(dir, 'img');
const mnt = path.join(dir, 'mnt');
mkdirSync(mnt);
try {
  sh('truncate', '-s', '1G', img);
  sh('mkfs.btrfs', '-q', '-f', img);
  sh('mount', '-o', 'loop', img, mnt);
  const vol = path.join(mnt, 'vol');
  sh('btrfs', '-q', 'subvolume', 'create', vol);
  for (let i = 0; i < files; i++) {
    const d = path.join(vol, `d${Math.floor(i / 500)}`);
    if (i % 500 === 0) mkdirSync(d);
    writeFileSync(path.join(d, `f${i}`), `${i}\n`);
  }
  sh('btrfs', '-q', 'subvolume', 'snapshot', '-r', vol, path.join(mnt, 'old'));
  appendFileSync(path.join(vol, 'd7', 'f3600'), 'changed\n');
  sh('btrfs', '-q', 'subvolume', 'snapshot', '-r', vol, path.join(mnt, 'new'));
  sh('sync');
  const result = {};
  for (const method of ['stream', 'rsync']) {
    const times = [];
    for (let r = 0; r < runs; r++) {
      const t0 = performance.now();
      const changes = await changesBetween(method, path.join(mnt, 'old'), path.join(mnt, 'new'));
      times.push(performance.now() - t0);
      if (changes.length !== 1) throw new Error(`${method}: expected 1 change, got ${JSON.stringify(changes)}`);
    }
    times.sort((a, b) => a - b);
    result[method] = { medianMs: +times[runs >> 1].toFixed(1), minMs: +times[0].toFixed(1) };
  }
  const ratio = +(result.rsync.medianMs / result.stream.medianMs).toFixed(1);
  console.log(JSON.stringify({ bench: 'changelog one-file change', files, runs, ...result, rsyncOverStream: ratio, date: new Date().toISOString(), node: process.version }));
  // A first Full: every path added. What sbk-changelog does (a readdir walk, whatever the
  // method), against what each method would cost without a parent.
  const first = {};
  const snap = path.join(mnt, 'new');
  const ways = { walk: () => changesBetween('stream', null, snap), stream: () => changesByStream(null, snap), rsync: () => changesByRsync(null, snap) };
  for (const [way, fn] of Object.entries(ways)) {
    const times = [];
    for (let r = 0; r < runs; r++) {
      const t0 = performance.now();
      const got = await fn();
      times.push(performance.now() - t0);
      const n = got.length;
      if (n !== files + files / 500 + 1) throw new Error(`${way}: expected ${files + files / 500 + 1} paths, got ${n}`);
    }
    times.sort((a, b) => a - b);
    first[way] = { medianMs: +times[runs >> 1].toFixed(1), minMs: +times[0].toFixed(1) };
  }
  console.log(JSON.stringify({ bench: 'changelog first Full (every path added)', files, runs, ...first, date: new Date().toISOString(), node: process.version }));
} finally {
  try { sh('umount', mnt); } catch {}
  rmSync(dir, { recursive: true, force: true });
}
