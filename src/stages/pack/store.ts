// `sbk-pack --store DIR`: the receiving end of a remote backup. Stores every archive of the input
// in DIR under its own name, with its changelog sidecar, under the container's lock of DIR, and
// confirms nothing (DIR's host may hold no snapshots). The input is the compressed stream of
// `sbk-pack -o -` (the sender's bytes are kept as they are, verified on the way in) or the tar
// stream of sbk-send (compressed here, as sbk-pack does).
import { createHash } from 'node:crypto';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { readArchives, type Manifest } from '../../formats/archive/archive.js';
import { codecForMagic, type Codec, type CompressedMember } from '../../formats/codecs/codec.js';
import { compressedMembers } from '../../formats/codecs/members.js';
import { createAtomicFile, WRITE_BEHIND_BYTES, type AtomicFile } from '../../system/atomic.js';
import { endStream, writeChunk } from '../../core/streams.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import { peekStream, sniff, describeKind } from '../../formats/input.js';
import { archiveFileName, archiveFileNames, changelogFileName } from '../../core/layout.js';
import { backupLockFile, withLock } from '../../system/lock.js';
import type { Log } from '../../core/log.js';
import { packArchives, refuseExisting, removeLeftovers, type CompressionOptions, type StoredArchive } from './pack.js';

export interface StoreOptions extends CompressionOptions {
  dir: string;
  log: Log;
  signal?: AbortSignal;
  onStored?: (a: StoredArchive) => Promise<void> | void;
}

/** Takes the input apart by its first bytes: compressed archives, a tar stream, or a mistake. */
export async function storeArchives(source: Readable, opts: StoreOptions): Promise<StoredArchive[]> {
  const { head, stream } = await peekStream(source, 512);
  if (codecForMagic(head)) return storeCompressedArchives(stream, opts);
  const kind = sniff(head);
  if (kind === 'tar') return packArchives(stream, { ...opts, target: { kind: 'dir', dir: opts.dir } });
  stream.destroy();
  if (kind === 'empty') throw new SbkError('no input (did the stage before fail?): expected the output of sbk-pack -o - (or of sbk-send) on stdin', ExitCode.badInput);
  throw new SbkError(
    `expected sbk archives (the gzip or zstd stream of sbk-pack -o -, or the tar stream of sbk-send) on stdin, got ${describeKind[kind]}${
      kind === 'ndjson' ? ' (pipe the records through sbk-send first)' : ''
    }`,
    ExitCode.badInput,
  );
}

/** What the reader of one member's tar learnt: the manifest, the changelog sidecar, the trailer. */
interface MemberState {
  manifest?: Manifest;
  changelog?: AtomicFile;
  verified: boolean;
}

/**
 * The compressed stream of `sbk-pack -o -`: one member (gzip member, zstd frame) per archive,
 * each of either codec. Each member's bytes go to a temporary file in DIR as they are, and its
 * content into the archive reader. Only when the member's own check (gzip: CRC-32, length; zstd:
 * the frame whole and its content checksum) and the archive's trailer (every sha256) pass is the
 * file linked under its final name (the member's codec gives the suffix): the stored file is
 * exactly what the sender wrote, and a cut or corrupt stream leaves nothing under a final name.
 */
async function storeCompressedArchives(stream: Readable, opts: StoreOptions): Promise<StoredArchive[]> {
  const { dir, log, signal } = opts;
  await removeLeftovers(dir, log, (n) => `removing ${n}, left by a transfer that did not finish`);
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

/** Reads the one archive of a member (verifying every sha256 against its trailer). */
async function readMemberArchive(
  tarStream: Readable,
  codec: Codec,
  index: number,
  dir: string,
  state: MemberState,
  signal?: AbortSignal,
): Promise<void> {
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
      await refuseExisting(archiveFileNames(m.container, m.time, m.full).map((n) => path.join(dir, n)));
    } else if (entry.role === 'changelog') {
      const f = (state.changelog = await createAtomicFile(path.join(dir, changelogFileName(m.container, m.time, m.full))));
      for await (const c of entry.body) await writeChunk(f.stream, c);
      await endStream(f.stream);
    } else if (entry.role === 'trailer') {
      state.verified = true;
    }
    // Other entries are drained (and hashed) by readArchives.
  }
  if (!state.verified) throw new SbkError(`${source}: the archive ends without its trailer (cut short?)`, ExitCode.corrupt);
}

/**
 * A promise that fails when `reading` does or `signal` aborts: every wait of the member's copy
 * races it, else a full pipe would hang the copy after the archive reader failed, and a signal
 * while waiting for input (an idle ssh link) would wait for more input.
 */
function failureOf(reading: Promise<void>, signal?: AbortSignal): Promise<never> {
  const failed = new Promise<never>((_, reject) => {
    reading.catch(reject);
    if (signal) {
      if (signal.aborted) reject(signal.reason);
      else signal.addEventListener('abort', () => reject(signal.reason), { once: true });
    }
  });
  failed.catch(() => {});
  return failed;
}

async function storeMember(member: CompressedMember, codec: Codec, index: number, state: MemberState, opts: StoreOptions): Promise<StoredArchive> {
  const { dir, signal } = opts;
  // Its final name comes with the manifest, inside the member.
  const file = await createAtomicFile(path.join(dir, `incoming${codec.suffix}`), 0o644, { writeBehind: WRITE_BEHIND_BYTES });
  const hash = createHash('sha256');
  let size = 0;
  const reading = readMemberArchive(member.plain, codec, index, dir, state, signal);
  const failed = failureOf(reading, signal);
  const race = <T>(p: Promise<T>) => Promise.race([p, failed]);
  try {
    const raw = member.raw[Symbol.asyncIterator]();
    for (;;) {
      signal?.throwIfAborted();
      const r = await race(raw.next());
      if (r.done) break;
      hash.update(r.value);
      size += r.value.length;
      await race(writeChunk(file.stream, r.value));
    }
    await race(endStream(file.stream));
    await reading;
    member.check();
    const m = state.manifest!;
    const finalPath = path.join(dir, archiveFileName(m.container, m.time, m.full, codec.suffix));
    const result: StoredArchive = { name: m.name, path: finalPath, size, sha256: hash.digest('hex'), manifest: m };
    await withLock(backupLockFile(dir, m.container), { holder: `sbk-pack --store ${m.name}`, wait: 600, signal }, async () => {
      // Under the lock: the backup may not be there under its other codec's name either.
      await refuseExisting(archiveFileNames(m.container, m.time, m.full).map((n) => path.join(dir, n)));
      await file.commit({ noClobber: true, as: finalPath });
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
