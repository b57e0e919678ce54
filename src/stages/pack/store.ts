// `sbk-pack --store DIR|s3://BUCKET/PREFIX`: the receiving end of a remote backup. Stores every
// archive of the input in the store (system/store.ts) under its own name, with its changelog
// sidecar, under the container's lock of DIR, and confirms nothing (the store's host may hold no
// snapshots). The input is the compressed stream of `sbk-pack -o -` (the sender's bytes are kept
// as they are, verified on the way in) or, into a DIR, the tar stream of sbk-send (compressed
// here, as sbk-pack does).
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { readArchives, type Manifest } from '../../formats/archive/archive.js';
import { codecForMagic, type Codec, type CompressedMember } from '../../formats/codecs/codec.js';
import { compressedMembers } from '../../formats/codecs/members.js';
import { isS3Url, type ArchiveStore, type StoreWriter } from '../../system/store.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import { peekStream, sniff, describeKind } from '../../formats/input.js';
import { archiveFileName, archiveFileNames, changelogFileName } from '../../core/layout.js';
import type { Log } from '../../core/log.js';
import { packArchives, type CompressionOptions, type StoredArchive } from './pack.js';

export interface StoreOptions extends CompressionOptions {
  store: ArchiveStore;
  log: Log;
  signal?: AbortSignal;
  onStored?: (a: StoredArchive) => Promise<void> | void;
}

/** Takes the input apart by its first bytes: compressed archives, a tar stream, or a mistake. */
export async function storeArchives(source: Readable, opts: StoreOptions): Promise<StoredArchive[]> {
  const { head, stream } = await peekStream(source, 512);
  if (codecForMagic(head)) return storeCompressedArchives(stream, opts);
  const kind = sniff(head);
  if (kind === 'tar') {
    if (isS3Url(opts.store.location)) {
      stream.destroy();
      throw new SbkError(`${opts.store.location} takes the compressed stream of sbk-pack -o -, not the tar stream of sbk-send (pipe it through sbk-pack -o - first)`, ExitCode.badInput);
    }
    return packArchives(stream, { ...opts, target: { kind: 'dir', dir: opts.store.location } });
  }
  stream.destroy();
  if (kind === 'empty') throw new SbkError('no input (did the stage before fail?): expected the output of sbk-pack -o - (or of sbk-send) on stdin', ExitCode.badInput);
  throw new SbkError(
    `expected sbk archives (the gzip stream of sbk-pack -o -, or the tar stream of sbk-send) on stdin, got ${describeKind[kind]}${
      kind === 'ndjson' ? ' (pipe the records through sbk-send first)' : ''
    }`,
    ExitCode.badInput,
  );
}

/** What the reader of one member's tar learnt: the manifest, the changelog sidecar, the trailer. */
interface MemberState {
  manifest?: Manifest;
  changelog?: StoreWriter;
  verified: boolean;
}

/**
 * The compressed stream of `sbk-pack -o -`: one member (gzip member, zstd frame) per archive,
 * each of either codec. Each member's bytes go to the store as they are (a temporary file in DIR,
 * a multipart upload), and its content into the archive reader. Only when the member's own check
 * (gzip: CRC-32, length; zstd: the frame whole and its content checksum) and the archive's
 * trailer (every sha256) pass is the file linked under its final name (the upload completed; the
 * member's codec gives the suffix): the stored file is exactly what the sender wrote, and a cut
 * or corrupt stream leaves nothing under a final name.
 */
async function storeCompressedArchives(stream: Readable, opts: StoreOptions): Promise<StoredArchive[]> {
  const { store, log, signal } = opts;
  await store.sweep(log);
  const members = compressedMembers(stream, 'stdin');
  const stored: StoredArchive[] = [];
  try {
    for (let index = 0; ; index++) {
      signal?.throwIfAborted();
      const state: MemberState = { verified: false };
      const member = await members.next(() => state.manifest?.name);
      if (!member) {
        if (index === 0) throw new SbkError('no input (did the stage before fail?): expected the output of sbk-pack -o - on stdin', ExitCode.badInput);
        break;
      }
      const a = await storeMember(member, member.codec, index, state, opts);
      log.verbose(`${a.name}: stored ${a.path} (${a.size} bytes, sha256 ${a.sha256})`);
      stored.push(a);
      await opts.onStored?.(a);
    }
  } catch (err) {
    members.destroy();
    if (signal?.aborted) throw signal.reason;
    throw err;
  }
  return stored;
}

/** A backup is stored once, under one codec's name: neither of its names may be taken. */
async function refuseTaken(store: ArchiveStore, m: Manifest): Promise<void> {
  for (const n of archiveFileNames(m.container, m.time, m.full))
    if ((await store.sizeOf(n)) !== undefined) throw new SbkError(`${store.locationOf(n)} already exists; not overwriting it`, ExitCode.conflict);
}

/** Reads the one archive of a member (verifying every sha256 against its trailer). */
async function readMemberArchive(
  tarStream: Readable,
  codec: Codec,
  index: number,
  target: { store: ArchiveStore; writer: StoreWriter; log: Log },
  state: MemberState,
  signal?: AbortSignal,
): Promise<void> {
  const { store, writer, log } = target;
  const source = `stdin, archive ${index + 1}`;
  for await (const entry of readArchives(tarStream, { source })) {
    signal?.throwIfAborted();
    if (entry.archive > 0)
      throw new SbkError(
        `${source}: the ${codec.name} member of ${state.manifest?.name ?? 'an archive'} holds a second archive (${entry.manifest.name}); sbk-pack -o - writes one member per archive`,
        ExitCode.corrupt,
      );
    const m = entry.manifest;
    if (entry.role === 'manifest') {
      state.manifest = m;
      await refuseTaken(store, m);
      await writer.name(archiveFileName(m.container, m.time, m.full, codec.suffix));
    } else if (entry.role === 'changelog') {
      const f = (state.changelog = await store.writer(changelogFileName(m.container, m.time, m.full), { suffix: '', log }));
      for await (const c of entry.body) await f.write(c);
    } else if (entry.role === 'trailer') {
      state.verified = true;
    }
    // Other entries are drained (and hashed) by readArchives.
  }
  if (!state.verified) throw new SbkError(`${source}: the archive ends without its trailer (cut short?)`, ExitCode.corrupt);
}

/**
 * A race against the failure of `reading` or an abort of `signal`: every wait of the member's
 * copy goes through it, else a full pipe would hang the copy after the archive reader failed, and
 * a signal while waiting for input (an idle ssh link) would wait for more input. Each wait drops
 * its listener when it settles: a `Promise.race` with one long-lived promise would keep every
 * chunk it ever resolved with (the whole archive) until the member is done.
 */
function racerOf(reading: Promise<void>, signal?: AbortSignal): <T>(p: Promise<T>) => Promise<T> {
  let failure: { err: unknown } | undefined;
  const waiting = new Set<(err: unknown) => void>();
  const fail = (err: unknown) => {
    failure ??= { err };
    for (const w of waiting) w(failure.err);
    waiting.clear();
  };
  reading.catch(fail);
  if (signal) {
    if (signal.aborted) fail(signal.reason);
    else signal.addEventListener('abort', () => fail(signal.reason), { once: true });
  }
  return <T>(p: Promise<T>) =>
    new Promise<T>((resolve, reject) => {
      if (failure) {
        p.catch(() => {});
        return reject(failure.err);
      }
      waiting.add(reject);
      p.then(
        (v) => {
          waiting.delete(reject);
          resolve(v);
        },
        (err) => {
          waiting.delete(reject);
          reject(err);
        },
      );
    });
}

async function storeMember(member: CompressedMember, codec: Codec, index: number, state: MemberState, opts: StoreOptions): Promise<StoredArchive> {
  const { store, signal, log } = opts;
  // Its final name comes with the manifest, inside the member.
  const file = await store.writer(undefined, { suffix: codec.suffix, log });
  const hash = createHash('sha256');
  let size = 0;
  const reading = readMemberArchive(member.plain, codec, index, { store, writer: file, log }, state, signal);
  const race = racerOf(reading, signal);
  try {
    const raw = member.raw[Symbol.asyncIterator]();
    for (;;) {
      signal?.throwIfAborted();
      const r = await race(raw.next());
      if (r.done) break;
      hash.update(r.value);
      size += r.value.length;
      await race(file.write(r.value));
    }
    await reading;
    member.check();
    const m = state.manifest!;
    const finalName = archiveFileName(m.container, m.time, m.full, codec.suffix);
    const result: StoredArchive = { name: m.name, path: store.locationOf(finalName), size, sha256: hash.digest('hex'), manifest: m };
    await store.exclusive(m.container, { holder: `sbk-pack --store ${m.name}`, wait: 600, signal }, async () => {
      // Under the lock: the backup may not be there under its other codec's name either.
      await refuseTaken(store, m);
      await file.commit();
      // Sidecar after the archive, as in the local store.
      if (state.changelog) await state.changelog.commit();
    });
    return result;
  } catch (err) {
    // With an error: the archive reader only hears of a destroy that carries one.
    member.destroy(err instanceof Error ? err : new Error(String(err)));
    await reading.catch(() => {});
    await file.abort();
    await state.changelog?.abort();
    throw err;
  } finally {
    member.destroy();
  }
}
