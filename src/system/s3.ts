// S3-compatible object storage (AWS S3, MinIO, Ceph RGW, Garage) as an archive store
// (system/store.ts): `s3://BUCKET/PREFIX`. The AWS SDK (@aws-sdk/client-s3, lib-storage) is
// loaded here only, on first use. Archives are written as multipart uploads completed only when
// the writer commits (after every check), with If-None-Match: * and a HEAD check before; heads of
// archives are read with ranged GETs. Every failure of the server or the network becomes one
// line (man sbk(7), OBJECT STORAGE and EXIT STATUS), never an SDK stack trace.
import { readFileSync } from 'node:fs';
import { Agent } from 'node:https';
import { PassThrough, Readable } from 'node:stream';
import type { S3Client } from '@aws-sdk/client-s3';
import { SbkError, StoreUnavailableError, ExitCode } from '../core/errors.js';
import { parseArchiveName, parseChangelogFileName } from '../core/layout.js';
import { writeChunk } from '../core/streams.js';
import type { Log } from '../core/log.js';
import type { ArchiveStore, S3Options, StoredObject, StoreWriter } from './store.js';

type Sdk = typeof import('@aws-sdk/client-s3');

/** Part size of uploads (MiB; SBK_S3_PART_MIB, 5..64): the parts in flight bound the memory (6 MiB, 2 in flight: under 150 MiB of RSS), and 10,000 parts bound an archive (6 MiB: 58 GiB; 64 MiB: 625 GiB). */
const PART_MIB = 6;
/** Parts uploaded at once. */
const PARTS_IN_FLIGHT = 2;

export interface S3Location {
  bucket: string;
  /** '' or ending with '/'. */
  prefix: string;
}

/** `s3://BUCKET[/PREFIX]` → bucket and prefix (a prefix names a folder: '/' is added). */
export function parseS3Url(url: string): S3Location {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  if (!m || !/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(m[1]!))
    throw new SbkError(`${url}: not an s3://BUCKET/PREFIX location (bucket names are 3-63 of a-z 0-9 . -)`, ExitCode.usage);
  const prefix = (m[2] ?? '').replace(/\/+$/, '');
  if (prefix.split('/').some((p) => p === '.' || p === '..') || prefix.startsWith('/'))
    throw new SbkError(`${url}: the prefix may not hold '.', '..' or empty parts`, ExitCode.usage);
  return { bucket: m[1]!, prefix: prefix ? prefix + '/' : '' };
}

const env = process.env;

/** A CommonJS package imported from the bundle: its exports are the namespace's default. */
const cjs = <T extends object>(ns: T): T => ((ns as { default?: T }).default?.constructor === Object ? (ns as { default: T }).default : ns);

/** The S3 client, from the options and the SDK's own chain (credentials, region, profiles). */
async function makeClient(o: S3Options): Promise<{ sdk: Sdk; client: S3Client; endpoint?: string }> {
  // The SDK warns on Node 20 (its releases after January 2027 need Node 22); the version used
  // here is pinned and runs on 20. Its own switch turns just that warning off.
  env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  const sdk = cjs(await import('@aws-sdk/client-s3'));
  const endpoint = o.endpoint || env.SBK_S3_ENDPOINT || env.AWS_ENDPOINT_URL_S3 || env.AWS_ENDPOINT_URL || undefined;
  const caFile = o.ca || env.SBK_S3_CA || env.AWS_CA_BUNDLE || undefined;
  let ca: Buffer | undefined;
  if (caFile) {
    try {
      ca = readFileSync(caFile);
    } catch (err) {
      throw new SbkError(`${caFile}: cannot read the CA bundle (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, ExitCode.usage);
    }
  }
  if (endpoint && !/^https?:\/\/[^/]/.test(endpoint))
    throw new SbkError(`S3 endpoint ${endpoint} is not an http:// or https:// URL`, ExitCode.usage);
  const client = new sdk.S3Client({
    endpoint,
    // Servers other than AWS are addressed by path (`https://host/bucket/key`): no DNS per bucket.
    forcePathStyle: endpoint !== undefined,
    region: env.AWS_REGION || env.AWS_DEFAULT_REGION || (endpoint ? 'us-east-1' : undefined),
    followRegionRedirects: true,
    maxAttempts: 3,
    // sbk checks every byte itself (sha256, gzip CRC); the SDK's newer default checksums
    // (aws-chunked trailers) are refused by many S3-compatible servers.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: { connectionTimeout: 10_000, requestTimeout: 120_000, ...(ca ? { httpsAgent: new Agent({ ca, keepAlive: true }) } : {}) },
  });
  return { sdk, client, endpoint };
}

const NET_UNREACHABLE = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'ETIMEDOUT', 'ECONNABORTED']);
const NET_CUT = new Set(['ECONNRESET', 'EPIPE', 'ERR_STREAM_PREMATURE_CLOSE', 'UND_ERR_SOCKET']);

/** The error code of a network error, wherever the SDK put it. */
function netCode(err: unknown): string | undefined {
  for (let e = err as { code?: unknown; cause?: unknown; errors?: unknown[] } | undefined, i = 0; e && i < 5; e = e.cause as typeof e, i++) {
    if (typeof e.code === 'string') return e.code;
    if (Array.isArray(e.errors) && e.errors.length) return netCode(e.errors[0]);
  }
  return undefined;
}

/** Any failure of an S3 request as one line with its exit status; `what` names the object or bucket. */
export function s3Failure(err: unknown, what: string, where: { endpoint?: string; bucket: string }): SbkError {
  if (err instanceof SbkError) return err;
  const e = err as { name?: string; message?: string; Code?: string; $metadata?: { httpStatusCode?: number } };
  const status = e?.$metadata?.httpStatusCode;
  const name = e?.Code ?? e?.name ?? '';
  const server = where.endpoint ?? 'AWS S3';
  // Everything but a missing object or a name taken: the store is unavailable.
  const mk = (m: string, code: (typeof ExitCode)[keyof typeof ExitCode] = ExitCode.failure) =>
    new (code === ExitCode.conflict || /: (no such object|not found)/.test(m) ? SbkError : StoreUnavailableError)(m, code, { cause: err });
  switch (name) {
    case 'NoSuchBucket':
      return mk(`${what}: bucket ${where.bucket} does not exist on ${server}`, ExitCode.notFound);
    case 'NoSuchKey':
    case 'NotFound':
      return mk(`${what}: no such object`, ExitCode.notFound);
    case 'InvalidAccessKeyId':
    case 'SignatureDoesNotMatch':
    case 'InvalidToken':
    case 'ExpiredToken':
    case 'AuthorizationHeaderMalformed':
      return mk(`${what}: ${server} refused the credentials (${name}): check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or the profile`);
    case 'CredentialsProviderError':
      return mk(`${what}: no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE`);
    case 'AccessDenied':
      return mk(`${what}: access denied by ${server} (the credentials lack a permission, or a bucket policy forbids it)`);
    case 'PreconditionFailed':
      return mk(`${what} already exists; not overwriting it`, ExitCode.conflict);
  }
  const code = netCode(err);
  if (code && NET_UNREACHABLE.has(code)) return mk(`${what}: cannot reach the S3 server ${server} (${code})`);
  // Before the name: the SDK calls a reset connection a TimeoutError.
  if ((code && NET_CUT.has(code)) || /socket hang up|aborted|premature close/i.test(e?.message ?? ''))
    return mk(`${what}: the connection to ${server} was cut (${code ?? e?.message})`);
  if (name === 'TimeoutError' || name === 'RequestTimeout') return mk(`${what}: ${server} did not answer in time`);
  if (/Region is missing/i.test(e?.message ?? '')) return mk(`no S3 region: set AWS_REGION (or give the server with --s3-endpoint)`, ExitCode.usage);
  if (code && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|TLS|SSL/.test(code))
    return mk(`${what}: cannot verify the TLS certificate of ${server} (${code}): give its CA with --s3-ca FILE or SBK_S3_CA`);
  if (status === 403) return mk(`${what}: access denied by ${server} (HTTP 403)`);
  if (status === 404) return mk(`${what}: not found (HTTP 404)`, ExitCode.notFound);
  const detail = [name, e?.message].filter((x) => x && x !== 'UnknownError').join(': ') || String(err);
  return mk(`${what}: ${server} failed${status ? ` with HTTP ${status}` : ''} (${detail.split('\n')[0]})`);
}

/** The store at `s3://BUCKET/PREFIX`; its first request tells a missing bucket or refused credentials. */
export async function openS3Store(url: string, o: S3Options): Promise<ArchiveStore> {
  const where = parseS3Url(url);
  const { sdk, client, endpoint } = await makeClient(o);
  const store = new S3Store(url.replace(/\/+$/, ''), where, sdk, client, endpoint);
  await store.probe();
  return store;
}

/** `s3://BUCKET/PREFIX/FILE` as the store of its folder and the file's name. */
export function splitS3Url(url: string): { store: string; file: string } {
  const i = url.lastIndexOf('/');
  if (i < 'ss3://x'.length || i === url.length - 1) throw new SbkError(`${url}: not an s3://BUCKET/…/FILE URL`, ExitCode.usage);
  return { store: url.slice(0, i), file: url.slice(i + 1) };
}

/** Names of this store's objects that belong to `container` (its archives and changelog sidecars). */
const belongsTo = (file: string, container: string) =>
  (parseArchiveName(file) ?? parseChangelogFileName(file))?.container === container;

class S3Store implements ArchiveStore {
  /** Containers whose unfinished uploads this run has aborted already. */
  private swept = new Set<string>();
  constructor(
    readonly location: string,
    private readonly where: S3Location,
    private readonly sdk: Sdk,
    private readonly client: S3Client,
    private readonly endpoint: string | undefined,
  ) {}

  private key = (file: string) => this.where.prefix + file;
  locationOf = (file: string) => `s3://${this.where.bucket}/${this.key(file)}`;

  /** Runs one request; its failure said as one line. */
  async call<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      throw s3Failure(err, what, { endpoint: this.endpoint, bucket: this.where.bucket });
    }
  }

  /** A listing says what HEAD cannot (HEAD answers carry no error code): a missing bucket, refused credentials. */
  async probe(): Promise<void> {
    const { ListObjectsV2Command } = this.sdk;
    // The first page only (no MaxKeys: s3rver fails a truncated listing that asks for one key).
    await this.call(this.location, () => this.client.send(new ListObjectsV2Command({ Bucket: this.where.bucket, Prefix: this.where.prefix, Delimiter: '/' })));
  }

  async list(): Promise<StoredObject[]> {
    const { ListObjectsV2Command } = this.sdk;
    const out: StoredObject[] = [];
    let token: string | undefined;
    do {
      const r = await this.call(this.location, () =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.where.bucket, Prefix: this.where.prefix, Delimiter: '/', ContinuationToken: token })),
      );
      for (const o of r.Contents ?? []) if (o.Key && o.Key.length > this.where.prefix.length) out.push({ file: o.Key.slice(this.where.prefix.length), size: o.Size ?? 0 });
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  async sizeOf(file: string): Promise<number | undefined> {
    const { HeadObjectCommand } = this.sdk;
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.where.bucket, Key: this.key(file) }));
      return r.ContentLength ?? 0;
    } catch (err) {
      const e = s3Failure(err, this.locationOf(file), { endpoint: this.endpoint, bucket: this.where.bucket });
      if (e.exitCode === ExitCode.notFound && !/bucket/.test(e.message)) return undefined;
      throw e;
    }
  }

  /** The body of a GET (of a range), whose network errors reach its reader as one-line errors. */
  private async get(file: string, range?: string): Promise<Readable> {
    const { GetObjectCommand } = this.sdk;
    const what = this.locationOf(file);
    const r = await this.call(what, () => this.client.send(new GetObjectCommand({ Bucket: this.where.bucket, Key: this.key(file), Range: range })));
    const body = r.Body as Readable;
    const out = new PassThrough({ highWaterMark: 1024 * 1024 });
    body.on('error', (err) => out.destroy(s3Failure(err, what, { endpoint: this.endpoint, bucket: this.where.bucket })));
    // A response that ends early without an error (a proxy cutting the stream) is a cut too.
    body.on('aborted', () => out.destroy(new StoreUnavailableError(`${what}: the connection to ${this.endpoint ?? 'AWS S3'} was cut`, ExitCode.failure)));
    out.on('close', () => body.destroy());
    body.pipe(out);
    return out;
  }

  openRead(file: string): Promise<Readable> {
    return this.get(file);
  }

  /** Ranges of 64 KiB and up, each fetched as the reader asks for more: an archive's head costs a request or two. */
  async openHead(file: string): Promise<Readable> {
    const size = await this.sizeOf(file);
    if (size === undefined) throw new SbkError(`${this.locationOf(file)}: no such archive`, ExitCode.notFound);
    let pos = 0;
    let step = 64 * 1024;
    let busy = false;
    const stream: Readable = new Readable({
      read: () => {
        if (busy) return;
        if (pos >= size) return void stream.push(null);
        busy = true;
        const end = Math.min(size, pos + step) - 1;
        step = Math.min(step * 2, 4 * 1024 * 1024);
        void (async () => {
          const chunks: Buffer[] = [];
          for await (const c of await this.get(file, `bytes=${pos}-${end}`)) chunks.push(c as Buffer);
          return Buffer.concat(chunks);
        })().then(
          (b) => {
            busy = false;
            pos = end + 1;
            if (b.length === 0) stream.push(null);
            else stream.push(b);
          },
          (err: Error) => stream.destroy(err),
        );
      },
    });
    return stream;
  }

  async remove(file: string): Promise<void> {
    const { DeleteObjectCommand } = this.sdk;
    await this.call(this.locationOf(file), () => this.client.send(new DeleteObjectCommand({ Bucket: this.where.bucket, Key: this.key(file) })));
  }

  async settle(): Promise<void> {}

  async writer(file: string | undefined, opts: { suffix: string; log: Log }): Promise<StoreWriter> {
    const w = new S3Writer(this, opts.log);
    if (file !== undefined) await w.open(file, false);
    return w;
  }

  async sweep(): Promise<void> {
    // Unfinished uploads are aborted per container, when its next archive is stored (abortStale).
  }

  /**
   * Aborts the unfinished multipart uploads of `container`'s names under the prefix: those of a
   * run that was killed or lost its connection (one container is stored by one run at a time:
   * its snapshots are taken under a lock, and each peer has its own prefix). A server that
   * cannot list uploads (some S3-compatible ones) is left to its lifecycle rules.
   */
  async abortStale(container: string, log: Log): Promise<void> {
    if (this.swept.has(container)) return;
    this.swept.add(container);
    const { ListMultipartUploadsCommand, AbortMultipartUploadCommand } = this.sdk;
    let uploads;
    try {
      uploads = (await this.client.send(new ListMultipartUploadsCommand({ Bucket: this.where.bucket, Prefix: this.where.prefix }))).Uploads ?? [];
    } catch (err) {
      const e = s3Failure(err, this.location, { endpoint: this.endpoint, bucket: this.where.bucket });
      if (/NotImplemented|HTTP 501|HTTP 405/.test(e.message)) {
        log.verbose(`${this.location}: the server cannot list unfinished uploads; not aborting stale ones`);
        return;
      }
      throw e;
    }
    for (const u of uploads) {
      const file = u.Key?.slice(this.where.prefix.length) ?? '';
      if (!u.Key?.startsWith(this.where.prefix) || file.includes('/') || !belongsTo(file, container)) continue;
      log.info(`aborting an unfinished upload of ${this.locationOf(file)}, left by a run that did not finish`);
      await this.call(this.locationOf(file), () =>
        this.client.send(new AbortMultipartUploadCommand({ Bucket: this.where.bucket, Key: u.Key, UploadId: u.UploadId })),
      );
    }
  }

  /** A new upload of `file`: parts sent as they fill, completed by done() once `body` ends. */
  async upload(file: string, body: Readable, ifNoneMatch: boolean): Promise<{ done: Promise<unknown> }> {
    const { Upload } = cjs(await import('@aws-sdk/lib-storage'));
    const mib = Number(env.SBK_S3_PART_MIB) || PART_MIB;
    const upload = new Upload({
      client: this.client,
      queueSize: PARTS_IN_FLIGHT,
      partSize: Math.min(64, Math.max(5, mib)) * 1024 * 1024,
      leavePartsOnError: false,
      // Sent with the PutObject of a one-part object and with CompleteMultipartUpload: a server
      // that honours it refuses to replace an object (412).
      params: { Bucket: this.where.bucket, Key: this.key(file), Body: body, ...(ifNoneMatch ? { IfNoneMatch: '*' } : {}) },
    });
    const done = upload.done().catch((err) => {
      throw s3Failure(err, this.locationOf(file), { endpoint: this.endpoint, bucket: this.where.bucket });
    });
    done.catch(() => {});
    return { done };
  }

  async exclusive<T>(_c: string, _o: unknown, fn: () => Promise<T>): Promise<T> {
    return fn();
  }
}

/**
 * One object written as a multipart upload. Bytes that come before the name is known (an
 * archive's head, before its manifest is read) are held, then sent; the upload is completed
 * only by commit() (the last part goes up then), and abort() (or an error) aborts it, so no
 * object appears under the key.
 */
class S3Writer implements StoreWriter {
  private held: Buffer[] = [];
  /** While the name is checked and the upload begun: held bytes wait for it (memory stays bounded). */
  private naming?: Promise<void>;
  private body?: PassThrough;
  private done?: Promise<unknown>;
  private file?: string;
  private archive = false;
  private finished = false;
  constructor(
    private readonly store: S3Store,
    private readonly log: Log,
  ) {}

  async open(file: string, archive: boolean): Promise<void> {
    this.file = file;
    this.archive = archive;
    const body = new PassThrough({ highWaterMark: 256 * 1024 });
    const { done } = await this.store.upload(file, body, archive);
    this.body = body;
    this.done = done;
    for (const c of this.held.splice(0)) body.write(c);
  }

  async name(file: string): Promise<void> {
    this.naming = (async () => {
      const parsed = parseArchiveName(file);
      if (parsed) await this.store.abortStale(parsed.container, this.log);
      await this.refuseExisting(file);
      await this.open(file, true);
    })();
    await this.naming;
  }

  private async refuseExisting(file: string): Promise<void> {
    if ((await this.store.sizeOf(file)) !== undefined)
      throw new SbkError(`${this.store.locationOf(file)} already exists; not overwriting it`, ExitCode.conflict);
  }

  async write(chunk: Buffer): Promise<void> {
    if (!this.body && this.naming) await this.naming;
    if (!this.body) {
      this.held.push(chunk);
      return;
    }
    // A failed upload stops reading its body: its error ends the wait.
    await Promise.race([writeChunk(this.body, chunk), this.done!.then(() => {})]);
  }

  async commit(): Promise<void> {
    if (!this.body) throw new SbkError('internal: an upload committed before it was named', ExitCode.bug);
    // For servers that ignore If-None-Match: the last look before the object appears.
    if (this.archive) await this.refuseExisting(this.file!);
    this.body.end();
    await this.done;
    this.finished = true;
  }

  async abort(): Promise<void> {
    if (this.finished || !this.body) return;
    // The upload's reader fails on the body's error, and aborts the multipart upload.
    this.body.destroy(new Error('aborted'));
    await this.done!.catch(() => {});
  }
}
