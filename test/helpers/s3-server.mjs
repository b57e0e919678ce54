// The tests' S3 server: s3rver (npm) on 127.0.0.1, a free port, its objects in the directory
// given as argv[2]; prints `port <n>` when it listens. s3rver 3.7.1 has no ListMultipartUploads
// and no AbortMultipartUpload: the two are added here over its own upload folders
// (<dir>/<bucket>/._S3rver_uploads/<id>/key), so that the tests see unfinished uploads as a
// real server shows them. Run as a child process by test/helpers/s3.ts (killed in teardown).
import { readdir, readFile, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import S3rver from 's3rver';

const dir = process.argv[2];
const server = new S3rver({ address: '127.0.0.1', port: 0, directory: dir, silent: true });

const xmlEscape = (s) => s.replace(/[<>&'"]/g, (c) => `&#${c.charCodeAt(0)};`);

/** The two multipart calls s3rver lacks, answered before its own router. */
async function uploadsMiddleware(ctx, next) {
  const url = new URL(ctx.url, 'http://x');
  const parts = url.pathname.split('/').filter(Boolean);
  const bucket = parts[0] && decodeURIComponent(parts[0]);
  const uploads = bucket ? path.join(dir, bucket, '._S3rver_uploads') : '';
  if (ctx.method === 'GET' && parts.length === 1 && url.searchParams.has('uploads')) {
    const prefix = url.searchParams.get('prefix') ?? '';
    const ids = await readdir(uploads).catch(() => []);
    const rows = [];
    for (const id of ids) {
      const key = await readFile(path.join(uploads, id, 'key'), 'utf8').catch(() => undefined);
      if (key === undefined || !key.startsWith(prefix)) continue;
      const st = await stat(path.join(uploads, id));
      rows.push(`<Upload><Key>${xmlEscape(key)}</Key><UploadId>${id}</UploadId><Initiated>${st.mtime.toISOString()}</Initiated></Upload>`);
    }
    ctx.type = 'application/xml';
    ctx.body = `<?xml version="1.0" encoding="UTF-8"?>\n<ListMultipartUploadsResult><Bucket>${xmlEscape(bucket)}</Bucket><IsTruncated>false</IsTruncated>${rows.join('')}</ListMultipartUploadsResult>`;
    return;
  }
  if (ctx.method === 'DELETE' && parts.length > 1 && url.searchParams.has('uploadId')) {
    const id = url.searchParams.get('uploadId');
    if (!/^[0-9a-f]+$/.test(id)) return next();
    await rm(path.join(uploads, id), { recursive: true, force: true });
    ctx.status = 204;
    return;
  }
  return next();
}
server.middleware.unshift(uploadsMiddleware);

const { port } = await server.run();
process.stdout.write(`port ${port}\n`);
const stop = () => server.close().finally(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
