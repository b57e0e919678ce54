// Benchmark (not a test): object storage against the local-file store, on one archive. Upload:
// `sbk-pack --store s3://…` vs `sbk-pack --store DIR` of the same `sbk-pack -o -` bytes;
// restore read path: `sbk-unpack --verify s3://…/FILE` (streamed GET, every check) vs the same
// on the file. Wall time (median of rounds), MiB/s, peak RSS (/usr/bin/time). The S3 server is
// s3rver on 127.0.0.1 (test/helpers/s3-server.mjs, its objects on this machine's disk), or the one
// of SBK_BENCH_S3_ENDPOINT (with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
// Usage: node bench/s3.mjs ARCHIVE [rounds]   (after `npm run build`); bench/run.js calls it (section s).
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, readFileSync, openSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const BIN = (n) => path.join(ROOT, 'bin', n);
const MiB = 1024 * 1024;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Runs argv under /usr/bin/time with stdin from a file: wall seconds and peak RSS in MiB. */
function timed(argv, env, stdinFile) {
  const tf = path.join(os.tmpdir(), `sbk-s3-bench-time-${process.pid}`);
  const t0 = performance.now();
  try {
    execFileSync('/usr/bin/time', ['-f', '%M', '-o', tf, ...argv], {
      env: { ...process.env, ...env },
      stdio: [stdinFile ? openSync(stdinFile, 'r') : 'ignore', 'ignore', 'pipe'],
    });
    const wall = (performance.now() - t0) / 1000;
    const rss = Number(readFileSync(tf, 'utf8').trim().split('\n').pop()) / 1024;
    return { wall, rss };
  } finally {
    rmSync(tf, { force: true });
  }
}

async function startServer() {
  if (process.env.SBK_BENCH_S3_ENDPOINT)
    return { endpoint: process.env.SBK_BENCH_S3_ENDPOINT, env: {}, stop: () => {} };
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sbk-bench-s3-'));
  const child = spawn('node', [path.join(ROOT, 'test/helpers/s3-server.mjs'), dir], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (c) => {
      out += c;
      const m = /port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    child.on('exit', () => reject(new Error('s3rver did not start')));
  });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    env: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' },
    stop: () => {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Upload and restore-read throughput of `archive` (an sbk .tar.gz), S3 vs a directory. */
export async function benchObjectStorage(archive, { rounds = 3, log = console.error } = {}) {
  const server = await startServer();
  const work = mkdtempSync(path.join(os.tmpdir(), 'sbk-bench-s3dir-'));
  try {
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    const { S3Client, CreateBucketCommand } = await import('@aws-sdk/client-s3');
    const env = { ...server.env, SBK_S3_ENDPOINT: server.endpoint };
    const client = new S3Client({ endpoint: server.endpoint, forcePathStyle: true, region: process.env.AWS_REGION ?? 'us-east-1', credentials: server.env.AWS_ACCESS_KEY_ID ? { accessKeyId: server.env.AWS_ACCESS_KEY_ID, secretAccessKey: server.env.AWS_SECRET_ACCESS_KEY } : undefined });
    const bucket = `sbk-bench-${process.pid}`;
    await client.send(new CreateBucketCommand({ Bucket: bucket }));
    client.destroy();
    const bytes = statSync(archive).size;
    const r = { s3Up: [], dirUp: [], s3Read: [], dirRead: [], s3UpRss: [], s3ReadRss: [] };
    for (let i = 0; i < rounds; i++) {
      // Alternating, a fresh prefix and directory per round (keys are never overwritten).
      const up = timed([BIN('sbk-pack'), '--store', `s3://${bucket}/r${i}`], env, archive);
      const dirUp = timed([BIN('sbk-pack'), '--store', path.join(work, `r${i}`)], env, archive);
      // Stored under the name its manifest gives.
      const file = readdirSync(path.join(work, `r${i}`)).find((n) => /^[^.].*\.tar\.\w+$/.test(n));
      const read = timed([BIN('sbk-unpack'), '--verify', `s3://${bucket}/r${i}/${file}`], env);
      const dirRead = timed([BIN('sbk-unpack'), '--verify', path.join(work, `r${i}`, file)], env);
      r.s3Up.push(up.wall), r.dirUp.push(dirUp.wall), r.s3Read.push(read.wall), r.dirRead.push(dirRead.wall);
      r.s3UpRss.push(up.rss), r.s3ReadRss.push(read.rss);
      log(`(s) round ${i + 1}: upload s3 ${up.wall.toFixed(2)} s, dir ${dirUp.wall.toFixed(2)} s; verify s3 ${read.wall.toFixed(2)} s, dir ${dirRead.wall.toFixed(2)} s`);
    }
    const rate = (s) => +(bytes / MiB / s).toFixed(1);
    const m = Object.fromEntries(Object.entries(r).map(([k, v]) => [k, +median(v).toFixed(2)]));
    return {
      server: process.env.SBK_BENCH_S3_ENDPOINT ? 'SBK_BENCH_S3_ENDPOINT' : 's3rver on 127.0.0.1',
      bytes,
      rounds,
      upload: { s3: m.s3Up, dir: m.dirUp, s3MiBs: rate(m.s3Up), dirMiBs: rate(m.dirUp), s3PeakRssMiB: Math.round(Math.max(...r.s3UpRss)) },
      verify: { s3: m.s3Read, dir: m.dirRead, s3MiBs: rate(m.s3Read), dirMiBs: rate(m.dirRead), s3PeakRssMiB: Math.round(Math.max(...r.s3ReadRss)) },
    };
  } finally {
    server.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

/** The section of bench/RESULTS.md. */
export function objectStorageReport(h) {
  return [
    '## (s) Object storage (bench/s3.mjs)',
    '',
    `One ${(h.bytes / MiB).toFixed(0)} MiB archive, ${h.rounds} rounds, medians; the S3 server: ${h.server} (its objects on the same disk).`,
    '',
    '| | s3:// | DIR | s3 peak RSS |',
    '| --- | ---: | ---: | ---: |',
    `| upload (sbk-pack --store) | ${h.upload.s3} s, ${h.upload.s3MiBs} MiB/s | ${h.upload.dir} s, ${h.upload.dirMiBs} MiB/s | ${h.upload.s3PeakRssMiB} MiB |`,
    `| restore read (sbk-unpack --verify) | ${h.verify.s3} s, ${h.verify.s3MiBs} MiB/s | ${h.verify.dir} s, ${h.verify.dirMiBs} MiB/s | ${h.verify.s3PeakRssMiB} MiB |`,
    '',
  ];
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  if (!process.argv[2]) throw new Error('usage: node bench/s3.mjs ARCHIVE [rounds]');
  console.log(JSON.stringify(await benchObjectStorage(process.argv[2], { rounds: Number(process.argv[3] ?? 3) })));
}
