// The user-space replay of a chain of archives into a plain directory on any filesystem, laid
// out as a container directory: <dir>/<volume>/… for every volume and the last archive's meta
// files. No BTRFS, no `btrfs receive`, no root. The archives are opened and checked exactly as
// the BTRFS restore opens and checks them (the same reader, link rule, CRC32C and receive guard);
// each volume's send streams are applied as they stream (volume.ts), in place through the chain,
// into <dir>/.sbk-replay/<volume> until the last archive is read, then moved into place.
import { chmod, mkdir, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { readArchives, type ArchiveEntry } from '../../../formats/archive/archive.js';
import { readError } from '../../../formats/archive/open.js';
import type { ChainId } from '../../../formats/archive/links.js';
import { SendStreamReader } from '../../../formats/sendstream/reader.js';
import { XattrWriter } from '../../../system/xattr.js';
import { SbkError, ExitCode } from '../../../core/errors.js';
import { formatTime } from '../../../core/layout.js';
import type { Log } from '../../../core/log.js';
import { checkFollows, routeEntry, type RestoreInput, type RestoreProgress } from '../input.js';
import { ContainerDir } from '../container.js';
import { VolumeReplay } from './volume.js';
import type { MetaOverlay } from './overlay.js';

export type { MetaOverlay, MetaOverlayEntry } from './overlay.js';
export { describeOverlay } from './overlay.js';

/** The directory in <dir> where the volumes are built until the last archive is read. */
export const REPLAY_STAGING = '.sbk-replay';

export interface ReplayOptions {
  log: Log;
  signal: AbortSignal;
  progress?: RestoreProgress;
  /** The container name of an original Subutai archive whose file name does not say (as --as). */
  as?: string;
  /** Called with the finished tree before the attributes of the container dir are set last. */
  beforeSeal?: (result: ReplayResult) => Promise<void>;
}

export interface ReplayResult {
  /** The volumes of the last archive, each now <dir>/<volume>. */
  volumes: string[];
  overlay: MetaOverlay;
  /** The chain's first archive (its Full) and the last one (the point replayed). */
  first: ChainId;
  last: ChainId;
}

/**
 * Replays the chain (opened/checked exactly as the BTRFS restore opens and checks archives) into
 * dir, laid out as a container dir: dir/<volume>/… and the meta files. `dir` must not exist or
 * be empty; given as a function, it is asked for once the first archive says what it is (a
 * restore names its target by it), before anything is written. On failure what it made inside
 * dir is removed (dir itself is the caller's).
 */
export async function replayChain(
  inputs: RestoreInput[],
  dir: string | ((first: ChainId) => Promise<string>),
  opts: ReplayOptions,
): Promise<ReplayResult> {
  const r = new Replay(dir, opts);
  try {
    return await r.run(inputs);
  } catch (err) {
    await r.discard();
    throw opts.signal.aborted ? opts.signal.reason : err;
  }
}

interface ArchiveState {
  id: ChainId;
  volumes: Set<string>;
}

/** The volume whose stream is being read: its replay and the stream's parser. */
interface Streaming {
  volume: string;
  entry: string;
  reader: SendStreamReader;
  replay: VolumeReplay;
}

class Replay {
  private dir?: string;
  private container?: ContainerDir;
  private first?: ChainId;
  private current?: ArchiveState;
  private previous?: ArchiveState;
  private streaming?: Streaming;
  private readonly volumes = new Map<string, VolumeReplay>();
  private readonly xattrs = new XattrWriter();

  constructor(
    private readonly target: string | ((first: ChainId) => Promise<string>),
    private readonly opts: ReplayOptions,
  ) {}

  private get staging(): string {
    return path.join(this.dir!, REPLAY_STAGING);
  }

  async run(inputs: RestoreInput[]): Promise<ReplayResult> {
    for (const input of inputs) await this.read(input);
    if (!this.previous) throw new SbkError('no archive in the input', ExitCode.badInput);
    return this.finish();
  }

  private async read(input: RestoreInput): Promise<void> {
    const { signal } = this.opts;
    signal.throwIfAborted();
    const tarStream = await input.open();
    const onAbort = () => tarStream.destroy(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      for await (const e of readArchives(tarStream, { legacy: true, source: input.source })) await this.entry(e, input, tarStream);
      // An original Subutai archive has no trailer: it ends with its input.
      if (this.current?.id.legacy) this.endArchive();
    } catch (err) {
      throw readError(err, input.source);
    } finally {
      signal.removeEventListener('abort', onAbort);
      tarStream.destroy();
    }
  }

  private entry(e: ArchiveEntry, input: RestoreInput, tarStream: Readable): Promise<void> {
    return routeEntry(e, input, this.opts.as, {
      current: () => this.current,
      begin: (id) => this.beginArchive(id),
      meta: (m, archive) => this.container!.writeMeta(m, archive),
      delta: (d) => this.delta(this.current!, d, input, tarStream),
      end: () => this.endArchive(),
    });
  }

  private async beginArchive(id: ChainId): Promise<void> {
    const { log } = this.opts;
    checkFollows(this.previous?.id, id);
    if (!this.previous) await this.open(id);
    if (id.legacy) log.warn(`${id.name} is an archive of the original Subutai tool: it carries no checksums, so its content cannot be verified`);
    await this.container!.reset();
    this.current = { id, volumes: new Set() };
    log.info(`${id.name}: replaying${id.time ? ` (${formatTime(id.time)})` : ''}`);
  }

  private async open(first: ChainId): Promise<void> {
    this.dir = typeof this.target === 'string' ? this.target : await this.target(first);
    await mkdir(this.dir, { recursive: true });
    const there = await readdir(this.dir);
    if (there.length) throw new SbkError(`${this.dir} is not empty`, ExitCode.conflict);
    await mkdir(this.staging, { mode: 0o700 });
    this.container = new ContainerDir(this.dir, this.opts.log, this.opts.signal, REPLAY_STAGING);
    this.first = first;
  }

  private async delta(cur: ArchiveState, e: ArchiveEntry, input: RestoreInput, tarStream: Readable): Promise<void> {
    const volume = e.volume!;
    if (this.streaming && this.streaming.volume !== volume) this.endVolume();
    const s = this.streaming ?? (await this.startVolume(cur, volume, e.name, input, tarStream));
    s.entry = e.name;
    const progress = this.opts.progress;
    for await (const chunk of e.body) {
      this.named(cur, () => s.reader.write(chunk));
      progress?.add(chunk.length);
    }
  }

  /** Errors of a stream start with the archive and the entry being read (a stream spans parts). */
  private named(cur: ArchiveState, f: () => void): void {
    try {
      f();
    } catch (err) {
      if (err instanceof SbkError) throw new SbkError(`${cur.id.name}: ${this.streaming?.entry ?? ''}: ${err.message}`, err.exitCode, { cause: err });
      throw err;
    }
  }

  private async startVolume(cur: ArchiveState, volume: string, entry: string, input: RestoreInput, tarStream: Readable): Promise<Streaming> {
    if (cur.volumes.has(volume)) throw new SbkError(`${cur.id.name}: the delta of ${volume} appears twice`, ExitCode.corrupt);
    cur.volumes.add(volume);
    let replay = this.volumes.get(volume);
    if (!replay) {
      const dir = path.join(this.staging, volume);
      const scratch = path.join(this.staging, `.scratch-${volume}`);
      await mkdir(dir, { mode: 0o700 });
      await mkdir(scratch, { mode: 0o700 });
      this.volumes.set(volume, (replay = new VolumeReplay({ volume, dir, scratch, xattrs: this.xattrs })));
    }
    this.opts.log.verbose(`${cur.id.name}: replaying ${volume}`);
    const r = replay;
    const reader = new SendStreamReader((c) => r.apply(c), { decode: 'all', wantData: true });
    this.streaming = { volume, entry, reader, replay };
    this.opts.progress?.start({ archive: cur.id.name, volume, input, tarStream });
    return this.streaming;
  }

  private endVolume(): void {
    const s = this.streaming;
    if (!s) return;
    this.named(this.current!, () => s.reader.end());
    this.streaming = undefined;
    this.opts.progress?.end();
  }

  private endArchive(): void {
    const cur = this.current!;
    this.endVolume();
    if (cur.volumes.size === 0) throw new SbkError(`${cur.id.name}: no volume in the archive`, ExitCode.corrupt);
    this.previous = cur;
    this.current = undefined;
  }

  /** The last archive's volumes into place, the others dropped; the meta's attributes last. */
  private async finish(): Promise<ReplayResult> {
    const last = this.previous!;
    const dir = this.dir!;
    const overlay: MetaOverlay = new Map();
    const volumes = [...last.volumes];
    for (const v of volumes) {
      if ((await readdir(dir)).includes(v)) throw new SbkError(`${last.id.name}: meta/${v} has the name of volume ${v}`, ExitCode.corrupt);
      const replay = this.volumes.get(v)!;
      for (const [rel, e] of replay.overlayByPath()) overlay.set(rel === '' ? v : `${v}/${rel}`, e);
      await rename(path.join(this.staging, v), path.join(dir, v));
    }
    await rm(this.staging, { recursive: true, force: true });
    await chmod(dir, 0o755); // as a container directory is made (the meta's own entry, if any, is set by seal)
    await this.container!.addNestedDirs(last.id, volumes);
    const result = { volumes, overlay, first: this.first!, last: last.id };
    await this.opts.beforeSeal?.(result);
    await this.container!.seal(last.id);
    return result;
  }

  /** After a failure: open files closed, what was made in dir removed. */
  async discard(): Promise<void> {
    this.xattrs.discard();
    for (const v of this.volumes.values()) v.finish();
    if (!this.dir) return;
    for (const n of await readdir(this.dir).catch(() => [])) await rm(path.join(this.dir, n), { recursive: true, force: true }).catch(() => {});
  }
}
