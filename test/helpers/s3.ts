// An S3 server for the object-storage tests. By default s3rver (test/helpers/s3-server.mjs) as a
// child process on 127.0.0.1, a free port, its objects in a temporary directory; stop() kills it
// and removes the directory (it is also killed if the test process exits first). With
// SBK_TEST_S3_ENDPOINT (and AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally AWS_REGION) in
// the environment the same tests run against that server instead (MinIO, Ceph RGW), each in
// buckets of its own that stop() empties and removes. The client calls here are the tests' view
// of the bucket, made with the same SDK the binaries use.
import { execa, type ResultPromise } from 'execa';
import { mkdtemp, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from './sandbox.js';

process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
const sdk = await import('@aws-sdk/client-s3');

export interface S3Server {
  endpoint: string;
  /** The environment a binary needs to reach it (endpoint and credentials). */
  env: Record<string, string>;
  client: InstanceType<typeof sdk.S3Client>;
  /** A new empty bucket, removed by stop(). */
  bucket(): Promise<string>;
  /** The keys under a prefix, sorted. */
  keys(bucket: string, prefix?: string): Promise<string[]>;
  /** The keys of unfinished multipart uploads. */
  uploads(bucket: string, prefix?: string): Promise<string[]>;
  get(bucket: string, key: string): Promise<Buffer>;
  put(bucket: string, key: string, body: Buffer): Promise<void>;
  stop(): Promise<void>;
}

async function startS3rver(): Promise<{ endpoint: string; env: Record<string, string>; stop(): Promise<void> }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'sbk-s3-'));
  const child: ResultPromise = execa('node', [path.join(ROOT, 'test/helpers/s3-server.mjs'), dir], { stdout: 'pipe', stderr: 'pipe', reject: false });
  const kill = () => child.kill('SIGKILL');
  process.once('exit', kill);
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (c: Buffer) => {
      out += c.toString();
      const m = /port (\d+)/.exec(out);
      if (m) resolve(Number(m[1]));
    });
    void child.then((r) => reject(new Error(`s3rver did not start: ${String(r.stderr)}`)));
  });
  return {
    endpoint: `http://127.0.0.1:${port}`,
    env: { AWS_ACCESS_KEY_ID: 'S3RVER', AWS_SECRET_ACCESS_KEY: 'S3RVER' },
    async stop() {
      process.off('exit', kill);
      child.kill('SIGKILL');
      await child;
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export async function startS3(): Promise<S3Server> {
  const given = process.env.SBK_TEST_S3_ENDPOINT;
  const server = given
    ? {
        endpoint: given,
        env: {
          AWS_ACCESS_KEY_ID: process.env.AWS_ACCESS_KEY_ID ?? '',
          AWS_SECRET_ACCESS_KEY: process.env.AWS_SECRET_ACCESS_KEY ?? '',
          ...(process.env.AWS_REGION ? { AWS_REGION: process.env.AWS_REGION } : {}),
        },
        stop: async () => {},
      }
    : await startS3rver();
  const client = new sdk.S3Client({
    endpoint: server.endpoint,
    forcePathStyle: true,
    region: process.env.AWS_REGION ?? 'us-east-1',
    credentials: { accessKeyId: server.env.AWS_ACCESS_KEY_ID!, secretAccessKey: server.env.AWS_SECRET_ACCESS_KEY! },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
  const buckets: string[] = [];
  const keys = async (bucket: string, prefix = '') => {
    const out: string[] = [];
    let token: string | undefined;
    do {
      const r = await client.send(new sdk.ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
      for (const o of r.Contents ?? []) out.push(o.Key!);
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out.sort();
  };
  const uploads = async (bucket: string, prefix = '') =>
    ((await client.send(new sdk.ListMultipartUploadsCommand({ Bucket: bucket, Prefix: prefix }))).Uploads ?? []).map((u) => u.Key!).sort();
  return {
    endpoint: server.endpoint,
    env: { ...server.env, SBK_S3_ENDPOINT: server.endpoint },
    client,
    keys,
    uploads,
    async bucket() {
      const name = `sbk-test-${randomBytes(5).toString('hex')}`;
      await client.send(new sdk.CreateBucketCommand({ Bucket: name }));
      buckets.push(name);
      return name;
    },
    async get(bucket, key) {
      const r = await client.send(new sdk.GetObjectCommand({ Bucket: bucket, Key: key }));
      return Buffer.from(await r.Body!.transformToByteArray());
    },
    async put(bucket, key, body) {
      await client.send(new sdk.PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
    },
    async stop() {
      try {
        if (given)
          for (const b of buckets) {
            for (const u of await client.send(new sdk.ListMultipartUploadsCommand({ Bucket: b }))
              .then((r) => r.Uploads ?? [])
              .catch(() => []))
              await client.send(new sdk.AbortMultipartUploadCommand({ Bucket: b, Key: u.Key, UploadId: u.UploadId })).catch(() => {});
            for (const k of await keys(b)) await client.send(new sdk.DeleteObjectCommand({ Bucket: b, Key: k }));
            await client.send(new sdk.DeleteBucketCommand({ Bucket: b }));
          }
      } finally {
        client.destroy();
        await server.stop();
      }
    },
  };
}
