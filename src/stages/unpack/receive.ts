// Receiving an archive's deltas: each volume's send stream is piped straight from the tar reader
// into `btrfs receive` (memory stays bounded whatever the size), every command checked on the
// way (CRC32C, the END command, and what receive would do with it: ReceiveGuard). An
// incremental finds its parent by Received UUID among the subvolumes received from the archive
// before it.
import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import type { ArchiveEntry } from '../../formats/archive/archive.js';
import { isSubvolume, receive } from '../../system/btrfs.js';
import { SendStreamReader } from '../../formats/sendstream/reader.js';
import { ReceiveGuard } from '../../formats/sendstream/guard.js';
import type { TreeModel } from '../../formats/sendstream/tree-model.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { Log } from '../../core/log.js';
import { waitForDrain } from '../../core/streams.js';
import type { RestoreInput, RestoreProgress } from './input.js';

/** Checks one volume's send stream as it passes. `end()` throws if the stream is incomplete. */
export interface StreamCheck {
  update(chunk: Buffer): void;
  end(): void;
}

/**
 * A StreamCheck on src/formats/sendstream/reader.ts's parser. Its errors start with `what()` (the archive
 * and the entry being read: a stream spans parts) and give the byte offset in the whole stream.
 */
export function sendStreamCheck(what: () => string, guard: ReceiveGuard, model?: TreeModel): StreamCheck {
  // Every command decoded (its data skipped), for the guard: what receive would do with it; and
  // for --verify, whether it applies to the tree the parent leaves.
  const reader = new SendStreamReader(
    (c) => {
      guard.check(c);
      model?.check(c);
    },
    { decode: 'all' },
  );
  const named = (f: () => unknown) => {
    try {
      f();
    } catch (err) {
      if (err instanceof SbkError) throw new SbkError(`${what()}: ${err.message}`, err.exitCode, { cause: err });
      throw err;
    }
  };
  return {
    update: (chunk) => named(() => reader.write(chunk)),
    end: () => named(() => reader.end()),
  };
}

/** One ReceiveGuard per volume, through the whole chain: what receive may touch (see ReceiveGuard). */
export class Guards {
  private readonly map = new Map<string, ReceiveGuard>();
  of(volume: string): ReceiveGuard {
    let g = this.map.get(volume);
    if (!g) this.map.set(volume, (g = new ReceiveGuard()));
    return g;
  }
}

/** Waits until `w` can take more, failing if it is closed or broken meanwhile. */
function drained(w: Writable): Promise<void> {
  if (w.destroyed || w.writableEnded) return Promise.reject(Object.assign(new Error('write after end'), { code: 'EPIPE' }));
  return waitForDrain(w, { closedError: () => Object.assign(new Error('the stream closed'), { code: 'EPIPE' }) });
}

/**
 * Bytes for `btrfs receive` in batches of about BATCH bytes, each written with one writev: a
 * system call costs more than its copy in a VM, and the chunks read from the archive are 64 KiB
 * at most (the pipe reads of the decompressor). Only checked bytes are queued (see `start()`).
 */
const BATCH = 256 * 1024;
class BatchedInput {
  private chunks: Buffer[] = [];
  private bytes = 0;
  constructor(readonly stdin: Writable) {}

  async write(chunk: Buffer): Promise<void> {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    if (this.bytes >= BATCH) await this.flush();
  }

  /** Hands the queued chunks to the pipe and waits until it takes more. */
  async flush(): Promise<void> {
    if (this.chunks.length === 0) return;
    const w = this.stdin;
    if (w.destroyed || w.writableEnded) return drained(w);
    w.cork();
    for (const c of this.chunks) w.write(c);
    w.uncork();
    this.chunks = [];
    this.bytes = 0;
    if (w.writableNeedDrain) await drained(w);
  }
}

/** The archive being received: its name, its directory (r<n>/) and what it made so far. */
export interface ReceivingArchive {
  name: string;
  dir: string;
  /** volume → received subvolume, in receive order */
  received: Map<string, string>;
}

/** Where the delta entries come from, for progress. */
export interface DeltaSource {
  input: RestoreInput;
  tarStream: Readable;
}

interface Receiving {
  volume: string;
  /** The tar entry (part) being received, for messages. */
  entry: string;
  dir: string;
  input: BatchedInput;
  done: Promise<void>;
  check: StreamCheck;
}

interface ReceiverOptions {
  log: Log;
  signal: AbortSignal;
  progress?: RestoreProgress;
  /** A receive failed while nothing awaited it: the restore must stop now, with this error. */
  onFailure(err: unknown): void;
}

/** The `btrfs receive` of one volume at a time, through the chain's archives. */
export class Receiver {
  private receiving?: Receiving;
  private readonly guards = new Guards();

  constructor(private readonly opts: ReceiverOptions) {}

  /** Feeds a delta entry (a volume's send stream, or a part of it) to the receive of its volume. */
  async delta(archive: ReceivingArchive, e: ArchiveEntry, from: DeltaSource): Promise<void> {
    const volume = e.volume!;
    if (this.receiving && this.receiving.volume !== volume) await this.end(archive);
    const rec = this.receiving ?? (await this.start(archive, volume, e.name, from));
    rec.entry = e.name;
    const progress = this.opts.progress;
    try {
      for await (const chunk of e.body) {
        rec.check.update(chunk);
        progress?.add(chunk.length);
        await rec.input.write(chunk);
      }
      await rec.input.flush();
    } catch (err) {
      // If btrfs receive failed, its message says why; otherwise the read failed.
      if ((err as NodeJS.ErrnoException).code === 'EPIPE') {
        await rec.done;
        // It exited 0 without taking the rest of the stream.
        throw new SbkError(`${archive.name}: btrfs receive of ${volume} stopped reading its send stream before the end`, ExitCode.failure, {
          cause: err,
        });
      }
      throw err;
    }
  }

  private async start(archive: ReceivingArchive, volume: string, entry: string, from: DeltaSource): Promise<Receiving> {
    if (archive.received.has(volume)) throw new SbkError(`${archive.name}: the delta of ${volume} appears twice`, ExitCode.corrupt);
    const dir = path.join(archive.dir, volume);
    await mkdir(dir);
    this.opts.log.verbose(`${archive.name}: receiving ${volume}`);
    const r = receive(dir, this.opts.signal);
    // Errors of stdin (EPIPE when receive dies) surface through `done` with btrfs's message.
    r.stdin.on('error', () => {});
    // A receive may fail while nothing awaits it (the input is slow to come): that must stop
    // the restore now, with btrfs's message, not crash the process as an unhandled rejection.
    r.done.catch((err: unknown) => this.opts.onFailure(err));
    // Every command's CRC32C is checked before its last bytes reach btrfs receive, so a
    // corrupt delta is reported as such (not as a receive failure) and never applied; this
    // also finds a stream cut at a command boundary, which receive would accept. (sha256
    // covers sbk archives as a whole, but only once the trailer is read.)
    const check = sendStreamCheck(() => `${archive.name}: ${rec.entry}`, this.guards.of(volume));
    const rec: Receiving = { volume, entry, dir, input: new BatchedInput(r.stdin), done: r.done, check };
    this.receiving = rec;
    this.opts.progress?.start({ archive: archive.name, volume, input: from.input, tarStream: from.tarStream });
    return rec;
  }

  /** Ends the volume being received, if any: its stream must be whole and make one subvolume. */
  async end(archive: ReceivingArchive): Promise<void> {
    const rec = this.receiving;
    if (!rec) return;
    rec.check.end();
    rec.input.stdin.end();
    await rec.done;
    this.receiving = undefined;
    this.opts.progress?.end();
    const made = await readdir(rec.dir);
    const sub = made.length === 1 ? path.join(rec.dir, made[0]!) : undefined;
    if (!sub || !(await isSubvolume(sub)))
      throw new SbkError(`${archive.name}: btrfs receive of ${rec.volume} made ${made.length ? made.join(', ') : 'nothing'}, not one subvolume`, ExitCode.failure);
    archive.received.set(rec.volume, sub);
  }

  /** Kills a running receive (on failure or signal) and waits for it to exit. */
  async kill(): Promise<void> {
    const rec = this.receiving;
    if (!rec) return;
    rec.input.stdin.destroy();
    await rec.done.catch(() => {});
    this.receiving = undefined;
  }
}
