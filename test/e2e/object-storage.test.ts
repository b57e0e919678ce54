// Object storage (s3://BUCKET/PREFIX) against a real S3 server on 127.0.0.1 (s3rver, started
// here and killed in teardown; or the server of SBK_TEST_S3_ENDPOINT, test/helpers/s3.ts), on
// synthetic archives (no BTRFS, no root): sbk-pack --store streams each member as an upload
// completed only when it checks out; sbk-plan plans from ranged reads of the heads; sbk-unpack
// --verify streams the objects; --prune --delete keeps chains whole; a cut connection, a killed
// uploader, a corrupt object, wrong credentials and a missing bucket fail with one line.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import os from 'node:os';
import path from 'node:path';
import { execa } from 'execa';
import { checkReceipt, type Receipt } from '../../src/formats/receipt.js';
import { synthArchive, synthManifest, synthTar } from '../fixtures/archives/synthetic.js';
import { makeMemberChain, packGzip, noise, bigMember, peakRss, type MemberChain } from '../helpers/stores.js';
import { BIN, ROOT } from '../helpers/sandbox.js';
import { startS3, type S3Server } from '../helpers/s3.js';
import { until } from '../helpers/wait.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let s3: S3Server;
let chain: MemberChain;
beforeAll(async () => {
  s3 = await startS3();
  chain = await makeMemberChain();
});
afterAll(async () => {
  await s3?.stop();
});

const run = (bin: string, args: string[], opts: { input?: Buffer | string; env?: Record<string, string> } = {}) =>
  execa(BIN(bin), args, { input: opts.input ?? '', env: { ...s3.env, ...opts.env }, reject: false, encoding: 'utf8' });

/** No SDK warning, stack or second line: stderr is empty or one sbk line. */
function oneLine(stderr: string, prog: string): string {
  const lines = stderr.trim().split('\n');
  expect(lines, stderr).toHaveLength(1);
  expect(lines[0]).toMatch(new RegExp(`^${prog}: `));
  return lines[0]!;
}

const names = (c: MemberChain) => c.manifests.map((m) => `${m.name}.tar.gz`);

describe('sbk-pack --store s3://BUCKET/PREFIX', () => {
  it('uploads each member byte for byte under its name, with its sidecar, and prints a receipt with its s3:// location', async () => {
    const bucket = await s3.bucket();
    const r = await run('sbk-pack', ['--store', `s3://${bucket}/peer1`], { input: Buffer.concat(chain.members) });
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    const receipts = r.stdout.trim().split('\n').map((l) => JSON.parse(l) as Receipt);
    expect(receipts.map((x) => x.name)).toEqual(chain.manifests.map((m) => m.name));
    for (const [i, rc] of receipts.entries()) {
      const bytes = await s3.get(bucket, `peer1/${names(chain)[i]}`);
      expect(bytes.equals(chain.members[i]!)).toBe(true);
      expect(rc).toMatchObject({ archive: names(chain)[i], size: bytes.length, sha256: sha(bytes), path: `s3://${bucket}/peer1/${names(chain)[i]}` });
      expect(rc.host).toBeUndefined();
      expect(() => checkReceipt(rc, 1)).not.toThrow();
    }
    expect((await s3.get(bucket, 'peer1/c1_1700000100_changelog.txt')).toString()).toBe('modified /etc/hostname\n');
    expect(await s3.keys(bucket)).toEqual([...names(chain).slice(0, 2), 'c1_1700000100_changelog.txt', names(chain)[2]!].map((n) => `peer1/${n}`).sort());
    expect(await s3.uploads(bucket)).toEqual([]);
  });

  it('a member bigger than a part goes up in parts; a cut or corrupt stream completes nothing and the next run leaves no upload', async () => {
    const bucket = await s3.bucket();
    const f = synthManifest({ container: 'big', time: 1_700_000_000, full: true });
    const big = await packGzip(await synthTar(f, { deltas: { rootfs: noise(12 * 1024 * 1024, 7), home: noise(1000, 2) } }));
    const url = `s3://${bucket}/p`;
    // Cut after two parts of 5 MiB have gone up: the upload is aborted, no object.
    const cut = await run('sbk-pack', ['--store', url], { input: big.subarray(0, big.length - 100), env: { SBK_S3_PART_MIB: '5' } });
    expect(cut.exitCode, cut.stderr).toBe(4);
    expect(oneLine(cut.stderr, 'sbk-pack')).toMatch(/cut short/);
    expect(await s3.keys(bucket)).toEqual([]);
    expect(await s3.uploads(bucket)).toEqual([]);
    const flipped = Buffer.from(big);
    flipped[big.length - 4000] ^= 0x10;
    const bad = await run('sbk-pack', ['--store', url], { input: flipped, env: { SBK_S3_PART_MIB: '5' } });
    expect(bad.exitCode, bad.stderr).toBe(4);
    expect(await s3.keys(bucket)).toEqual([]);
    expect(await s3.uploads(bucket)).toEqual([]);
    const ok = await run('sbk-pack', ['--store', url], { input: big, env: { SBK_S3_PART_MIB: '5' } });
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect((await s3.get(bucket, 'p/big_1700000000_Full.tar.gz')).equals(big)).toBe(true);
    // Never overwritten.
    const again = await run('sbk-pack', ['--store', url], { input: big });
    expect(again.exitCode).toBe(6);
    expect(oneLine(again.stderr, 'sbk-pack')).toMatch(/big_1700000000_Full\.tar\.gz already exists; not overwriting it/);
  });
});

/**
 * A TCP proxy to the S3 server that passes `budget` bytes from the clients in all and then cuts
 * every connection (and every new one): a server or network that drops the link mid-transfer.
 * `downBudget` does the same for the bytes coming back.
 */
async function cuttingProxy(target: string, budget: { up?: number; down?: number }) {
  const { hostname, port } = new URL(target);
  let up = budget.up ?? Infinity;
  let down = budget.down ?? Infinity;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(Number(port), hostname);
    sockets.add(client).add(upstream);
    const cut = () => {
      client.destroy();
      upstream.destroy();
    };
    if (up <= 0 || down <= 0) return cut();
    client.on('data', (c: Buffer) => {
      up -= c.length;
      if (up < 0) return cut();
      upstream.write(c);
    });
    upstream.on('data', (c: Buffer) => {
      down -= c.length;
      if (down < 0) return cut();
      client.write(c);
    });
    for (const s of [client, upstream]) {
      s.on('error', cut);
      s.on('close', cut);
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

describe('sbk-pack --store s3:// input', () => {
  it('refuses the tar stream of sbk-send (exit 3: pipe it through sbk-pack -o - first) and stores nothing', async () => {
    const bucket = await s3.bucket();
    const r = await run('sbk-pack', ['--store', `s3://${bucket}/p`], { input: await synthTar(synthManifest({ container: 'c1', time: 1_700_000_000, full: true })) });
    expect(r.exitCode).toBe(3);
    expect(oneLine(r.stderr, 'sbk-pack')).toMatch(/takes the compressed stream of sbk-pack -o -, not the tar stream of sbk-send/);
    expect(await s3.keys(bucket)).toEqual([]);
  });
});

describe('sbk-pack --store s3:// memory', () => {
  it('stays under 150 MiB for an archive of 160 MiB (parts of 6 MiB, 2 in flight)', async () => {
    const bucket = await s3.bucket();
    const big = await bigMember('mem', 160);
    const r = await peakRss(BIN('sbk-pack'), ['--store', `s3://${bucket}/m`], big, s3.env);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.rssMiB).toBeLessThan(150);
    expect((await s3.get(bucket, 'm/mem_1700000000_Full.tar.gz')).equals(big)).toBe(true);
  });
});

describe('sbk-pack --store s3:// cut short', () => {
  let big: Buffer;
  beforeAll(async () => {
    const f = synthManifest({ container: 'big', time: 1_700_000_000, full: true });
    big = await packGzip(await synthTar(f, { deltas: { rootfs: noise(14 * 1024 * 1024, 9), home: noise(1000, 2) } }));
  });

  it('an uploader killed mid-way leaves no object; the next run of the container aborts its upload and stores it', async () => {
    const bucket = await s3.bucket();
    const url = `s3://${bucket}/p`;
    const child = execa(BIN('sbk-pack'), ['--store', url], { env: { ...s3.env, SBK_S3_PART_MIB: '5' }, stdin: 'pipe', reject: false });
    child.stdin!.write(big.subarray(0, 11 * 1024 * 1024));
    await until(async () => (await s3.uploads(bucket)).length > 0, 'an upload under way');
    child.kill('SIGKILL');
    await child;
    expect(await s3.keys(bucket)).toEqual([]);
    expect(await s3.uploads(bucket)).toEqual(['p/big_1700000000_Full.tar.gz']);
    const next = await run('sbk-pack', ['--store', url], { input: big });
    expect(next.exitCode, next.stderr).toBe(0);
    expect(next.stderr).toMatch(/aborting an unfinished upload of s3:\/\/.*\/p\/big_1700000000_Full\.tar\.gz, left by a run that did not finish/);
    expect(await s3.uploads(bucket)).toEqual([]);
    expect((await s3.get(bucket, 'p/big_1700000000_Full.tar.gz')).equals(big)).toBe(true);
  });

  it('SIGTERM mid-upload: exit 143, the upload aborted, nothing stored', async () => {
    const bucket = await s3.bucket();
    const child = execa(BIN('sbk-pack'), ['--store', `s3://${bucket}/p`], { env: { ...s3.env, SBK_S3_PART_MIB: '5' }, stdin: 'pipe', reject: false });
    child.stdin!.write(big.subarray(0, 11 * 1024 * 1024));
    await until(async () => (await s3.uploads(bucket)).length > 0, 'an upload under way');
    child.kill('SIGTERM');
    const r = await child;
    expect(r.exitCode).toBe(143);
    expect(await s3.keys(bucket)).toEqual([]);
    expect(await s3.uploads(bucket)).toEqual([]);
  });

  it('a connection cut by the network mid-upload: one line, exit 1, no object; the next run leaves no upload', async () => {
    const bucket = await s3.bucket();
    const url = `s3://${bucket}/p`;
    const proxy = await cuttingProxy(s3.endpoint, { up: 8 * 1024 * 1024 });
    try {
      const r = await run('sbk-pack', ['--store', url], { input: big, env: { SBK_S3_ENDPOINT: proxy.url, SBK_S3_PART_MIB: '5' } });
      expect(r.exitCode, r.stderr).toBe(1);
      expect(oneLine(r.stderr, 'sbk-pack')).toMatch(/connection to http:\/\/127\.0\.0\.1:\d+ was cut|cannot reach the S3 server/);
    } finally {
      await proxy.close();
    }
    expect(await s3.keys(bucket)).toEqual([]);
    const next = await run('sbk-pack', ['--store', url], { input: big });
    expect(next.exitCode, next.stderr).toBe(0);
    expect(await s3.uploads(bucket)).toEqual([]);
    expect(await s3.keys(bucket)).toEqual(['p/big_1700000000_Full.tar.gz']);
  });
});

describe('sbk-plan and sbk-unpack on s3://', () => {
  const FIXTURES = path.join(ROOT, 'test/fixtures/archives');
  const fx = ['fx_1795673813_Full.tar.gz', 'fx_1795673814.tar.gz'];
  let bucket = '';
  beforeAll(async () => {
    bucket = await s3.bucket();
    const members = await Promise.all(fx.map((f) => readFile(path.join(FIXTURES, f))));
    const r = await run('sbk-pack', ['--store', `s3://${bucket}/peer1`], { input: Buffer.concat(members) });
    expect(r.exitCode, r.stderr).toBe(0);
  });

  it('plans the chain from ranged reads of the heads; --list and --json; --verify streams the objects', async () => {
    const url = `s3://${bucket}/peer1`;
    const plan = await run('sbk-plan', ['fx', '--dir', url]);
    expect(plan.stderr).toBe('');
    expect(plan.stdout.split('\n')).toEqual(fx.map((f) => `${url}/${f}`));
    const at = await run('sbk-plan', ['fx', '--dir', url, '--at', '1795673813', '--json']);
    expect(at.stdout.trim().split('\n').map((l) => JSON.parse(l).path)).toEqual([`${url}/${fx[0]}`]);
    const list = await run('sbk-plan', ['fx', '--dir', url, '--list', '--json']);
    expect(list.stdout.trim().split('\n').map((l) => JSON.parse(l).chain)).toEqual(['complete', 'complete']);
    // The lines of sbk-plan, and URLs as arguments.
    const v = await run('sbk-unpack', ['--verify'], { input: plan.stdout + '\n' });
    expect(v.exitCode, v.stderr).toBe(0);
    const args = await run('sbk-unpack', ['--verify', `${url}/${fx[0]}`, `${url}/${fx[1]}`]);
    expect(args.exitCode, args.stderr).toBe(0);
    const none = await run('sbk-unpack', ['--verify', `${url}/fx_1.tar.gz`]);
    expect(none.exitCode).toBe(5);
    expect(oneLine(none.stderr, 'sbk-unpack')).toMatch(/fx_1\.tar\.gz: no such archive/);
  });

  it('a corrupt object fails --verify with exit 4; a download cut by the network fails with one line', async () => {
    const b = await s3.bucket();
    const good = await readFile(path.join(FIXTURES, fx[0]!));
    const bad = Buffer.from(good);
    bad[Math.floor(bad.length * 0.7)] ^= 0x08;
    await s3.put(b, `p/${fx[0]}`, bad);
    const r = await run('sbk-unpack', ['--verify', `s3://${b}/p/${fx[0]}`]);
    expect(r.exitCode, r.stderr).toBe(4);
    await s3.put(b, `q/${fx[0]}`, good);
    const proxy = await cuttingProxy(s3.endpoint, { down: Math.floor(good.length / 2) });
    try {
      const cut = await run('sbk-unpack', ['--verify', `s3://${b}/q/${fx[0]}`], { env: { SBK_S3_ENDPOINT: proxy.url } });
      expect(cut.exitCode).not.toBe(0);
      expect(cut.stderr).toMatch(/connection to http:\/\/127\.0\.0\.1:\d+ was cut|cut short/);
      expect(cut.stderr).not.toMatch(/internal error|at .*\.mjs|Warning/);
    } finally {
      await proxy.close();
    }
  });

  it('--prune --delete on a bucket: whole chains go, newest first, each sidecar before its archive', async () => {
    const b = await s3.bucket();
    const f1 = synthManifest({ container: 'c1', time: 1_700_000_000, full: true });
    const i1 = synthManifest({ container: 'c1', time: 1_700_086_400, full: false, parent: f1 });
    const f2 = synthManifest({ container: 'c1', time: 1_700_172_800, full: true });
    const i2 = synthManifest({ container: 'c1', time: 1_700_259_200, full: false, parent: f2 });
    for (const m of [f1, i1, f2, i2]) {
      await s3.put(b, `p/${m.name}.tar.gz`, await synthArchive(m));
      await s3.put(b, `p/${m.name}_changelog.txt`, Buffer.from('added /x\n'));
    }
    await s3.put(b, 'p/other_1700000000_Full.tar.gz', await synthArchive(synthManifest({ container: 'other', time: 1_700_000_000, full: true })));
    const url = `s3://${b}/p`;
    const dry = await run('sbk-plan', ['c1', '--dir', url, '--prune', '--keep-last', '1']);
    expect(dry.exitCode, dry.stderr).toBe(0);
    const order = [i1, f1].flatMap((m) => [`${url}/${m.name}_changelog.txt`, `${url}/${m.name}.tar.gz`]);
    expect(dry.stdout.trim().split('\n')).toEqual(order);
    expect(await s3.keys(b)).toHaveLength(9);
    const del = await run('sbk-plan', ['c1', '--dir', url, '--prune', '--keep-last', '1', '--delete']);
    expect(del.exitCode, del.stderr).toBe(0);
    expect(del.stdout.trim().split('\n')).toEqual(order);
    expect(await s3.keys(b)).toEqual(
      ['other_1700000000_Full.tar.gz', ...[f2, i2].flatMap((m) => [`${m.name}.tar.gz`, `${m.name}_changelog.txt`])].map((k) => `p/${k}`).sort(),
    );
    const plan = await run('sbk-plan', ['c1', '--dir', url]);
    expect(plan.stdout.split('\n')).toEqual([f2, i2].map((m) => `${url}/${m.name}.tar.gz`));
  });
});

describe('errors of the server, one line each', () => {
  it('a missing bucket: exit 5; wrong credentials, an unreachable server: exit 1; no SDK output', async () => {
    const b = await s3.bucket();
    const missing = await run('sbk-plan', ['c1', '--dir', 's3://sbk-no-such-bucket/p']);
    expect(missing.exitCode).toBe(5);
    expect(oneLine(missing.stderr, 'sbk-plan')).toMatch(/bucket sbk-no-such-bucket does not exist/);
    const pack = await run('sbk-pack', ['--store', 's3://sbk-no-such-bucket/p'], { input: chain.members[0] });
    expect(pack.exitCode).toBe(5);
    expect(oneLine(pack.stderr, 'sbk-pack')).toMatch(/bucket sbk-no-such-bucket does not exist/);
    const creds = { AWS_ACCESS_KEY_ID: 'NOSUCHKEY', AWS_SECRET_ACCESS_KEY: 'wrong' };
    for (const [bin, args] of [
      ['sbk-plan', ['c1', '--dir', `s3://${b}/p`]],
      ['sbk-pack', ['--store', `s3://${b}/p`]],
      ['sbk-unpack', ['--verify', `s3://${b}/p/c1_1700000000_Full.tar.gz`]],
    ] as const) {
      const r = await run(bin, [...args], { env: creds, input: chain.members[0] });
      expect(r.exitCode, r.stderr).toBe(1);
      expect(oneLine(r.stderr, bin)).toMatch(/refused the credentials \((InvalidAccessKeyId|SignatureDoesNotMatch)\)/);
    }
    // A port nothing listens on.
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const port = (srv.address() as net.AddressInfo).port;
    await new Promise((r) => srv.close(r));
    const down = await run('sbk-plan', ['c1', '--dir', `s3://${b}/p`], { env: { SBK_S3_ENDPOINT: `http://127.0.0.1:${port}` } });
    expect(down.exitCode).toBe(1);
    expect(oneLine(down.stderr, 'sbk-plan')).toMatch(/cannot reach the S3 server http:\/\/127\.0\.0\.1:\d+ \(ECONNREFUSED\)/);
    // --s3-endpoint wins over the environment.
    const opt = await run('sbk-plan', ['c1', '--dir', `s3://${b}/p`, '--s3-endpoint', s3.endpoint], { env: { SBK_S3_ENDPOINT: `http://127.0.0.1:${port}` } });
    expect(opt.exitCode).toBe(5);
    expect(oneLine(opt.stderr, 'sbk-plan')).toMatch(/no backup of c1 in s3:\/\//);
  });
});

describe('TLS with a private CA', () => {
  it('--s3-ca (or SBK_S3_CA) names the CA of a server sbk does not know; without it: one line, exit 1', async () => {
    const b = await s3.bucket();
    const dir = await mkdtemp(path.join(os.tmpdir(), 'sbk-s3-tls-'));
    // A certificate of its own for 127.0.0.1, in front of the test server (TLS ends here).
    const [key, cert] = [path.join(dir, 'key.pem'), path.join(dir, 'cert.pem')];
    await execa('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
    const upstream = new URL(s3.endpoint);
    const proxy = tls.createServer({ key: await readFile(key), cert: await readFile(cert) }, (client) => {
      const up = net.connect(Number(upstream.port), upstream.hostname);
      client.on('error', () => up.destroy());
      up.on('error', () => client.destroy());
      client.pipe(up).pipe(client);
    });
    try {
      await new Promise<void>((r) => proxy.listen(0, '127.0.0.1', r));
      const endpoint = `https://127.0.0.1:${(proxy.address() as net.AddressInfo).port}`;
      const args = ['c1', '--dir', `s3://${b}/p`, '--s3-endpoint', endpoint];
      const unknown = await run('sbk-plan', args);
      expect(unknown.exitCode, unknown.stderr).toBe(1);
      expect(oneLine(unknown.stderr, 'sbk-plan')).toMatch(/cannot verify the TLS certificate of .*--s3-ca FILE or SBK_S3_CA/);
      // Reached: the bucket is there and empty.
      const withCa = await run('sbk-plan', [...args, '--s3-ca', cert]);
      expect(withCa.exitCode, withCa.stderr).toBe(5);
      expect(oneLine(withCa.stderr, 'sbk-plan')).toMatch(/no backup of c1 in s3:\/\//);
      const byEnv = await run('sbk-plan', args, { env: { SBK_S3_CA: cert } });
      expect(byEnv.exitCode, byEnv.stderr).toBe(5);
    } finally {
      await new Promise((r) => proxy.close(r));
      await rm(dir, { recursive: true, force: true });
    }
  });
});

