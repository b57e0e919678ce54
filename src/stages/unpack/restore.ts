// sbk-unpack's work: receive a chain of archives into a temporary directory on the LXC dir's
// filesystem, then move the finished container into place in one rename.
//
//   <lxc-dir>/.sbk-restore-<name>-<pid>/
//     new/                 the container directory being built: meta files, then live volumes
//     r<n>/<volume>/<sub>  what `btrfs receive` made from archive n (read-only, Received UUID)
//     old/                 with --force: the replaced container, until the new one is in place
//
// Each archive's deltas are piped straight from the tar reader into `btrfs receive`, so memory
// stays bounded whatever the size. An incremental finds its parent by Received UUID among the
// subvolumes received from the archive before it; those are deleted once they are no longer a
// parent. The live volumes are writable snapshots of the last received ones: they carry no
// Received UUID, and the received subvolumes are never flipped writable (`btrfs property set ro
// false` breaks later incrementals). Any failure or signal deletes the temporary directory and
// every subvolume in it; nothing appears at the target unless the whole chain was received and
// verified.
import { acquireLock, chainLockFile, restoreLockFile, type Lock } from '../../system/lock.js';
import { lstat, mkdir, readdir, rename, rm, rmdir, chmod, chown, stat, utimes, writeFile, readFile } from 'node:fs/promises';
import { createWriteStream } from 'node:fs';
import path from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import { readArchives, type ArchiveEntry, type Manifest, type VolumeRoot } from '../../formats/archive/archive.js';
import { deleteSubvolume, isOnBtrfs, isSubvolume, receive, snapshot } from '../../system/btrfs.js';
import { readArchiveHead, readError } from '../../formats/archive/open.js';
import { linkProblem } from '../../formats/archive/links.js';
import { SbkError, ExitCode, describeSystemError } from '../../core/errors.js';
import { checkContainerName, formatTime, type ParsedArchiveName } from '../../core/layout.js';
import { parseLxcConfig, rewriteConfigForRestore, rootfsPath, configValue, serializeLxcConfig } from '../../formats/lxc-config.js';
import { exists, fsyncDir } from '../../system/atomic.js';
import { refuseIfActive } from '../../system/lxc.js';
import { ReceiveGuard, SendStreamReader } from '../../formats/sendstream/reader.js';
import type { Log } from '../../core/log.js';
import { isProcessAlive } from '../../system/proc.js';

export interface RestoreInput {
  /** A path, or 'stdin': for messages. */
  source: string;
  /** Opens the uncompressed tar stream of one or more archives. Called once, in input order. */
  open(): Promise<Readable>;
  /** From the file name: the only name and kind an original Subutai archive has. */
  nameInfo?: ParsedArchiveName;
  /** Size of the archive file, when known (for progress). */
  size?: number;
}

/** Progress of the volumes' send streams as they are received or checked. */
export interface RestoreProgress {
  /** A volume's stream starts: the archive, the volume, and the tar stream it is read from. */
  volume(archive: string, volume: string, input: RestoreInput, tarStream: Readable): void;
  /** Bytes of the current volume's stream passed on (called per chunk: keep it cheap). */
  add(n: number): void;
  /** The current volume's stream is complete. */
  end(): void;
}

export interface RestoreOptions {
  lxcDir: string;
  /** Restore under this name (default: the archived container's). */
  as?: string;
  /** Replace an existing container, once the new one is complete. */
  force?: boolean;
  /** Seconds to wait for another restore of the same target (undefined: fail at once). */
  lockWait?: number;
  log: Log;
  signal: AbortSignal;
  progress?: RestoreProgress;
}

export interface RestoreResult {
  name: string;
  dir: string;
  /** The backup restored (the last archive's name). */
  backup: string;
  archives: number;
}

// ---------------------------------------------------------------------------------------------
// Send stream checks (CRC32C of every command, the END command)

/** Checks one volume's send stream as it passes. `end()` throws if the stream is incomplete. */
export interface StreamCheck {
  update(chunk: Buffer): void;
  end(): void;
}

/**
 * A StreamCheck on src/formats/sendstream/reader.ts's parser. Its errors start with `what()` (the archive
 * and the entry being read: a stream spans parts) and give the byte offset in the whole stream.
 */
export function sendStreamCheck(what: () => string, guard: ReceiveGuard = new ReceiveGuard()): StreamCheck {
  // Every command decoded (its data skipped), for the guard: what receive would do with it.
  const reader = new SendStreamReader((c) => guard.check(c), { decode: 'all' });
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

// ---------------------------------------------------------------------------------------------
// Helpers

const TEMP_PREFIX = '.sbk-restore-';
const TEMP_RE = /^\.sbk-restore-(.+)-(\d+)$/;


/** Subvolumes below `dir` (not `dir` itself), not descending into them. */
async function nestedSubvolumes(dir: string): Promise<string[]> {
  const found: string[] = [];
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (!e.isDirectory()) continue;
      const p = path.join(d, e.name);
      if (await isSubvolume(p).catch(() => false)) found.push(p);
      else await walk(p);
    }
  };
  await walk(dir);
  return found;
}

/** Deletes a subvolume; one holding nested subvolumes (docker in a container …) is emptied of them first. */
async function deleteSubvolumeDeep(p: string): Promise<void> {
  try {
    await deleteSubvolume(p);
  } catch (err) {
    // Rare (only a replaced live container can hold nested subvolumes): walk it only then.
    const nested = await nestedSubvolumes(p).catch(() => []);
    if (nested.length === 0) throw err;
    for (const n of nested) await deleteSubvolumeDeep(n);
    await deleteSubvolume(p);
  }
}

/** Removes a directory tree, deleting the subvolumes in it with btrfs (rm cannot). */
export async function removeTree(p: string): Promise<void> {
  let st;
  try {
    st = await lstat(p);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!st.isDirectory()) {
    await rm(p, { force: true });
    return;
  }
  if (await isSubvolume(p).catch(() => false)) {
    await deleteSubvolumeDeep(p);
    return;
  }
  for (const n of await readdir(p)) await removeTree(path.join(p, n));
  await rmdir(p);
}

/** Waits until `w` can take more, failing if it is closed or broken meanwhile. */
function drained(w: Writable): Promise<void> {
  if (w.destroyed || w.writableEnded) return Promise.reject(Object.assign(new Error('write after end'), { code: 'EPIPE' }));
  return new Promise((resolve, reject) => {
    const done = (err?: Error) => {
      w.off('drain', onDrain);
      w.off('error', done);
      w.off('close', onClose);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onClose = () => done(Object.assign(new Error('the stream closed'), { code: 'EPIPE' }));
    w.once('drain', onDrain);
    w.once('error', done);
    w.once('close', onClose);
  });
}

const human = (n: number) =>
  n >= 1024 ** 3 ? `${(n / 1024 ** 3).toFixed(1)} GiB` : n >= 1024 ** 2 ? `${(n / 1024 ** 2).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;

/** What an archive is, whether it has a manifest or only a file name (original Subutai). */
interface ArchiveId {
  manifest?: Manifest;
  legacy: boolean;
  container: string;
  name: string;
  full: boolean;
  time: number;
}

function legacyId(input: RestoreInput, as: string | undefined): ArchiveId {
  const n = input.nameInfo;
  if (!n) {
    if (!as)
      throw new SbkError(
        `${input.source}: an archive of the original Subutai tool carries no container name; give one with --as NAME`,
        ExitCode.usage,
      );
    return { legacy: true, container: as, name: input.source, full: true, time: 0 };
  }
  const name = `${n.container}_${n.time}${n.full ? '_Full' : ''}`;
  return { legacy: true, container: n.container, name, full: n.full, time: n.time };
}

/** Why `id` cannot come next after `prev` (undefined: the first archive) in one restore. */
function sequenceProblem(prev: ArchiveId | undefined, id: ArchiveId): SbkError | undefined {
  const bad = (m: string) => new SbkError(m, ExitCode.badInput);
  if (!prev) {
    if (!id.full) return bad(`${id.name} is an incremental backup: a restore starts at its Full (sbk-plan ${id.container} | sbk-unpack)`);
    return undefined;
  }
  if (id.container !== prev.container) return bad(`${id.name} is a backup of ${id.container}, not of ${prev.container}: one chain at a time`);
  if (id.full) return bad(`${id.name} is a Full backup in the middle of a chain (after ${prev.name})`);
  if (id.legacy !== prev.legacy) return bad(`${id.name} cannot follow ${prev.name}: original Subutai archives and sbk archives do not chain`);
  if (id.manifest && prev.manifest) {
    const problem = linkProblem(id.manifest, prev.manifest);
    if (problem) return bad(`${id.name} cannot follow ${prev.name}: ${problem}`);
  } else if (id.time <= prev.time) {
    return bad(`${id.name} is not newer than ${prev.name}: give the archives oldest first`);
  }
  return undefined;
}

const manifestId = (m: Manifest): ArchiveId => ({ manifest: m, legacy: false, container: m.container, name: m.name, full: m.full, time: m.time });

/**
 * Checks the order of archive files from their first entries before any is received, so a
 * wrong list fails in a second instead of after receiving a large Full.
 */
export async function precheckFiles(inputs: RestoreInput[], as: string | undefined): Promise<void> {
  let prev: ArchiveId | undefined;
  for (const input of inputs) {
    const head = await readArchiveHead(input.source);
    const id = head.manifest ? manifestId(head.manifest) : legacyId(input, as);
    const problem = sequenceProblem(prev, id);
    if (problem) throw problem;
    prev = id;
  }
}

// ---------------------------------------------------------------------------------------------
// Restore

interface Receiving {
  volume: string;
  /** The tar entry (part) being received, for messages. */
  entry: string;
  dir: string;
  stdin: Writable;
  done: Promise<void>;
  check?: StreamCheck;
}

interface ArchiveState {
  index: number;
  id: ArchiveId;
  dir: string;
  /** volume → received subvolume, in receive order */
  received: Map<string, string>;
}

interface MetaDir {
  rel: string;
  mode: number;
  mtime: Date;
  uid: number;
  gid: number;
}

export class Restore {
  private tmp?: string;
  private name?: string;
  private lock?: Lock;
  private chainLock?: Lock;
  private current?: ArchiveState;
  private previous?: ArchiveState;
  private receiving?: Receiving;
  private metaDirs: MetaDir[] = [];
  private count = 0;
  private first?: ArchiveId;
  /** The input being read and its tar stream (for progress). */
  private input?: RestoreInput;
  private tarStream?: Readable;
  private readonly internal = new AbortController();
  private readonly signal: AbortSignal;
  private readonly isRoot = process.getuid?.() === 0;
  /** One per volume, through the chain: what receive may touch (see ReceiveGuard). */
  private readonly guards = new Map<string, ReceiveGuard>();
  private guardOf(volume: string): ReceiveGuard {
    let g = this.guards.get(volume);
    if (!g) this.guards.set(volume, (g = new ReceiveGuard()));
    return g;
  }

  constructor(private readonly opts: RestoreOptions) {
    this.signal = AbortSignal.any([opts.signal, this.internal.signal]);
  }

  /** Restores the chain the inputs hold, in order. On failure removes everything it made. */
  async run(inputs: RestoreInput[]): Promise<RestoreResult> {
    try {
      for (const input of inputs) {
        this.signal.throwIfAborted();
        const tarStream = await input.open();
        this.input = input;
        this.tarStream = tarStream;
        // A signal must also stop a read that waits for input (a slow ssh pipe).
        const onAbort = () => tarStream.destroy(this.signal.reason as Error);
        this.signal.addEventListener('abort', onAbort, { once: true });
        try {
          for await (const entry of readArchives(tarStream, { legacy: true, source: input.source })) {
            await this.entry(entry, input);
          }
          // An original Subutai archive has no trailer: it ends with its input.
          if (this.current?.id.legacy) await this.endArchive();
        } catch (err) {
          throw readError(err, input.source);
        } finally {
          this.signal.removeEventListener('abort', onAbort);
          tarStream.destroy();
        }
      }
      if (!this.previous) throw new SbkError('no archive in the input', ExitCode.badInput);
      return await this.finish();
    } catch (err) {
      const reason = this.opts.signal.aborted ? this.opts.signal.reason : err;
      await this.cleanup();
      throw reason;
    } finally {
      await this.chainLock?.release();
      await this.lock?.release();
    }
  }

  private async entry(e: ArchiveEntry, input: RestoreInput): Promise<void> {
    if (!this.current) {
      if (e.role === 'manifest') await this.beginArchive(manifestId(e.manifest));
      else await this.beginArchive(legacyId(input, this.opts.as));
      if (e.role === 'manifest') return;
    }
    switch (e.role) {
      case 'manifest':
        throw new SbkError(`${input.source}: a second manifest inside ${this.current!.id.name}`, ExitCode.corrupt);
      case 'meta':
        await this.writeMeta(e);
        return;
      case 'changelog':
        return; // not needed to restore; the reader still checks its sha256
      case 'delta':
        await this.receiveDelta(e);
        return;
      case 'trailer':
        // readArchives yields the trailer only once every entry and delta matched it.
        await this.endArchive();
        return;
    }
  }

  private async beginArchive(id: ArchiveId): Promise<void> {
    const { log } = this.opts;
    const problem = sequenceProblem(this.previous?.id, id);
    if (problem) throw problem;
    if (!this.previous) await this.prepare(id);
    if (id.legacy) log.warn(`${id.name} is an archive of the original Subutai tool: it carries no checksums, so its content cannot be verified`);
    const index = this.count++;
    const dir = path.join(this.tmp!, `r${index}`);
    await mkdir(dir);
    // The meta files of the last archive are the ones restored: start afresh for each.
    const work = path.join(this.tmp!, 'new');
    await rm(work, { recursive: true, force: true });
    await mkdir(work, { mode: 0o755 });
    this.metaDirs = [];
    this.current = { index, id, dir, received: new Map() };
    log.info(`${id.name}: receiving${id.time ? ` (${formatTime(id.time)})` : ''}`);
  }

  /** Checks the target and the LXC dir, and makes the temporary directory. */
  private async prepare(first: ArchiveId): Promise<void> {
    const { lxcDir } = this.opts;
    const name = checkContainerName(this.opts.as ?? first.container, this.opts.as ? '--as name' : 'container name');
    if (process.getuid?.() !== 0)
      throw new SbkError('restoring needs root (btrfs receive); sbk-unpack --verify checks archives without it', ExitCode.failure);
    let onBtrfs: boolean;
    try {
      if (!(await stat(lxcDir)).isDirectory()) throw new SbkError(`LXC directory ${lxcDir} is not a directory`, ExitCode.failure);
      onBtrfs = await isOnBtrfs(lxcDir);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new SbkError(`LXC directory ${lxcDir} does not exist`, ExitCode.notFound);
      if (code === 'ENOTDIR') throw new SbkError(`LXC directory ${lxcDir}: a part of its path is not a directory`, ExitCode.failure);
      throw describeSystemError(err, `LXC directory ${lxcDir}`) ?? err;
    }
    if (!onBtrfs) throw new SbkError(`LXC directory ${lxcDir} is not on a BTRFS filesystem`, ExitCode.failure);
    // One restore per target at a time; held until the container is in place or cleaned up.
    this.lock = await acquireLock(restoreLockFile(lxcDir, name), {
      holder: `sbk-unpack (restore of ${name})`,
      wait: this.opts.lockWait,
      signal: this.signal,
    });
    const target = path.join(lxcDir, name);
    await this.sweep(name);
    if (!this.opts.force && (await exists(target)))
      throw new SbkError(
        `container ${name} already exists at ${target}; restore under another name with --as NAME, or replace it with --force`,
        ExitCode.conflict,
      );
    // --force over a running (or frozen …) container would delete its volumes from under it.
    if (this.opts.force && (await exists(target))) await refuseIfActive(lxcDir, name, 'replacing', this.signal);
    // One restore per chain at a time, whatever its name: btrfs receive finds an incremental's
    // parent by Received UUID anywhere on the filesystem, so it could pick the subvolume another
    // restore of the chain received (and deletes once applied). Taken after the name's lock.
    this.chainLock = await acquireLock(chainLockFile(lxcDir, first.container, first.name), {
      holder: `sbk-unpack (restore of ${first.name} as ${name})`,
      wait: this.opts.lockWait,
      signal: this.signal,
    });
    const tmp = path.join(lxcDir, `${TEMP_PREFIX}${name}-${process.pid}`);
    await mkdir(tmp, { mode: 0o700 });
    this.tmp = tmp;
    this.name = name;
    this.first = first;
  }

  /**
   * Removes the leftovers of every restore in the LXC dir that was killed (its process is
   * gone): those of `name` under its lock, which this run holds (a failure there stops the
   * restore), those of other names each under that name's lock taken without waiting (a name
   * whose lock is busy is skipped: a live restore of it sweeps its own; a failure is a warning).
   */
  private async sweep(name: string): Promise<void> {
    const { lxcDir, log } = this.opts;
    const dead = new Map<string, string[]>();
    for (const n of await readdir(lxcDir)) {
      const m = TEMP_RE.exec(n);
      if (!m || isProcessAlive(Number(m[2]))) continue;
      try {
        checkContainerName(m[1]!);
      } catch {
        continue; // not a name sbk-unpack restores to: not ours
      }
      dead.set(m[1]!, [...(dead.get(m[1]!) ?? []), n]);
    }
    const own = dead.get(name);
    if (own) await this.sweepName(name, own);
    for (const [other, dirs] of dead) {
      if (other === name) continue;
      this.signal.throwIfAborted();
      let lock: Lock;
      try {
        lock = await acquireLock(restoreLockFile(lxcDir, other), { holder: `sbk-unpack (restore of ${name}, removing leftovers of ${other})` });
      } catch (err) {
        log.verbose(`not removing the leftovers of a restore of ${other} now: ${(err as Error).message}`);
        continue;
      }
      try {
        await this.sweepName(other, dirs);
      } catch (err) {
        const e = describeSystemError(err) ?? (err as Error);
        log.warn(`could not remove the leftovers of a restore of ${other} (${dirs.join(', ')}): ${e.message}`);
      } finally {
        await lock.release();
      }
    }
  }

  /**
   * Removes the temporary directories `dirs` that dead restores of `name` left. One killed
   * between the two renames of --force holds the replaced container in old/, and nothing is at
   * the target: that is the only copy, put back (as cleanup() would have) before anything.
   */
  private async sweepName(name: string, dirs: string[]): Promise<void> {
    const { lxcDir, log } = this.opts;
    const target = path.join(lxcDir, name);
    for (const n of dirs) {
      const dir = path.join(lxcDir, n);
      if (!(await exists(dir))) continue; // another sweep was first
      const old = path.join(dir, 'old');
      if ((await exists(old)) && !(await exists(target))) {
        log.warn(`put ${name} back at ${target} from ${old}, where a restore that did not finish had left it`);
        await rename(old, target);
      }
      log.info(`removing ${dir}, left by a restore that did not finish`);
      await removeTree(dir);
    }
  }

  private async writeMeta(e: ArchiveEntry): Promise<void> {
    // readArchives has refused absolute paths, `..` and anything but files and directories, and
    // everything below new/ was made here: no symlink can lead a write elsewhere.
    const rel = e.name.replace(/^meta\/?/, '').replace(/\/$/, '');
    const base = path.join(this.tmp!, 'new');
    const dest = rel === '' ? base : path.join(base, rel);
    const h = e.header;
    if (rel === '' && h.type !== 'directory') throw new SbkError(`${this.current!.id.name}: 'meta' is a file, not a directory`, ExitCode.corrupt);
    const mode = (h.mode ?? (h.type === 'directory' ? 0o755 : 0o644)) & 0o7777;
    if (h.type === 'directory') {
      await mkdir(dest, { recursive: true });
      this.metaDirs.push({ rel, mode, mtime: h.mtime ?? new Date(), uid: h.uid ?? 0, gid: h.gid ?? 0 });
      return;
    }
    await mkdir(path.dirname(dest), { recursive: true });
    if (await exists(dest)) await rm(dest, { recursive: true }); // a later tar entry wins, as in tar
    await pipeline(e.body, createWriteStream(dest, { mode: 0o600, flags: 'wx' }), { signal: this.signal });
    await this.setAttrs(dest, mode, h.mtime, h.uid, h.gid);
  }

  private async setAttrs(p: string, mode: number, mtime: Date | undefined, uid: number | undefined, gid: number | undefined) {
    if (this.isRoot) await chown(p, uid ?? 0, gid ?? 0);
    await chmod(p, mode);
    if (mtime) await utimes(p, mtime, mtime);
  }

  /** Mode, owner and times (to the nanosecond: touch(1), as utimes(2) from Node rounds to a double). */
  private async setRoot(p: string, root: VolumeRoot): Promise<void> {
    if (this.isRoot) await chown(p, root.uid, root.gid);
    await chmod(p, root.mode);
    for (const [flag, t] of [['-a', root.atime], ['-m', root.mtime]] as const)
      await execa('touch', ['-h', flag, '-d', `@${t}`, '--', p], { stdin: 'ignore', cancelSignal: this.signal });
  }

  private async receiveDelta(e: ArchiveEntry): Promise<void> {
    const cur = this.current!;
    const volume = e.volume!;
    if (this.receiving && this.receiving.volume !== volume) await this.endReceive();
    if (!this.receiving) {
      if (cur.received.has(volume)) throw new SbkError(`${cur.id.name}: the delta of ${volume} appears twice`, ExitCode.corrupt);
      const dir = path.join(cur.dir, volume);
      await mkdir(dir);
      this.opts.log.verbose(`${cur.id.name}: receiving ${volume}`);
      const r = receive(dir, this.signal);
      // Errors of stdin (EPIPE when receive dies) surface through `done` with btrfs's message.
      r.stdin.on('error', () => {});
      // A receive may fail while nothing awaits it (the input is slow to come): that must stop
      // the restore now, with btrfs's message, not crash the process as an unhandled rejection.
      r.done.catch((err: unknown) => this.internal.abort(err));
      // Every command's CRC32C is checked before its last bytes reach btrfs receive, so a
      // corrupt delta is reported as such (not as a receive failure) and never applied; this
      // also finds a stream cut at a command boundary, which receive would accept. (sha256
      // covers sbk archives as a whole, but only once the trailer is read.)
      const rec: Receiving = { volume, entry: e.name, dir, stdin: r.stdin, done: r.done };
      rec.check = sendStreamCheck(() => `${cur.id.name}: ${rec.entry}`, this.guardOf(volume));
      this.receiving = rec;
      this.opts.progress?.volume(cur.id.name, volume, this.input!, this.tarStream!);
    }
    const rec = this.receiving;
    rec.entry = e.name;
    const progress = this.opts.progress;
    try {
      for await (const chunk of e.body) {
        rec.check?.update(chunk);
        progress?.add(chunk.length);
        if (!rec.stdin.write(chunk)) await drained(rec.stdin);
      }
    } catch (err) {
      // If btrfs receive failed, its message says why; otherwise the read failed.
      if ((err as NodeJS.ErrnoException).code === 'EPIPE') {
        await rec.done;
        // It exited 0 without taking the rest of the stream.
        throw new SbkError(`${cur.id.name}: btrfs receive of ${volume} stopped reading its send stream before the end`, ExitCode.failure, {
          cause: err,
        });
      }
      throw err;
    }
  }

  private async endReceive(): Promise<void> {
    const rec = this.receiving!;
    const cur = this.current!;
    rec.check?.end();
    rec.stdin.end();
    await rec.done;
    this.receiving = undefined;
    this.opts.progress?.end();
    const made = await readdir(rec.dir);
    const sub = made.length === 1 ? path.join(rec.dir, made[0]!) : undefined;
    if (!sub || !(await isSubvolume(sub)))
      throw new SbkError(`${cur.id.name}: btrfs receive of ${rec.volume} made ${made.length ? made.join(', ') : 'nothing'}, not one subvolume`, ExitCode.failure);
    cur.received.set(rec.volume, sub);
  }

  private async endArchive(): Promise<void> {
    if (this.receiving) await this.endReceive();
    const cur = this.current!;
    if (cur.received.size === 0) throw new SbkError(`${cur.id.name}: no volume in the archive`, ExitCode.corrupt);
    // The archive before this one was the parent of its incrementals; nothing needs it now.
    if (this.previous) await removeTree(this.previous.dir);
    this.previous = cur;
    this.current = undefined;
  }

  private async finish(): Promise<RestoreResult> {
    const { log, lxcDir } = this.opts;
    const last = this.previous!;
    const name = this.name!;
    const tmp = this.tmp!;
    const work = path.join(tmp, 'new');
    const target = path.join(lxcDir, name);

    // Live volumes: writable snapshots of the received ones (no Received UUID on them).
    for (const [volume, sub] of last.received) {
      if (await exists(path.join(work, volume)))
        throw new SbkError(`${last.id.name}: meta/${volume} has the name of volume ${volume}`, ExitCode.corrupt);
      this.signal.throwIfAborted();
      await snapshot(sub, path.join(work, volume), { readonly: false }, this.signal);
    }
    for (const n of last.id.manifest?.nestedSubvolumes ?? []) {
      if (last.received.has(n.volume)) await this.makeNestedDir(last.id.name, path.join(work, n.volume), n);
    }
    await this.rewriteConfig(last.id, work, target, name);
    await removeTree(last.dir);
    // Directory modes and times last: writing into a directory changes its mtime.
    for (const d of [...this.metaDirs].sort((a, b) => b.rel.length - a.rel.length))
      await this.setAttrs(d.rel === '' ? work : path.join(work, d.rel), d.mode, d.mtime, d.uid, d.gid);
    // Each volume's root as the snapshot had it (the manifest says; older archives do not).
    for (const v of last.id.manifest?.volumes ?? []) if (v.root) await this.setRoot(path.join(work, v.name), v.root);
    this.signal.throwIfAborted();

    // Into place. The existence check and rename are two steps; a container appearing in
    // between makes rename fail (ENOTEMPTY), except an empty directory, which it replaces.
    const old = path.join(tmp, 'old');
    let replaced = false;
    const appeared = () => new SbkError(`container ${name} appeared at ${target} during the restore; not replacing it`, ExitCode.conflict);
    if (await exists(target)) {
      if (!this.opts.force) throw appeared();
      // Again: it may have been started while the archives were received.
      await refuseIfActive(lxcDir, name, 'replacing', this.signal);
      try {
        await rename(target, old);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'EBUSY')
          throw new SbkError(`cannot replace ${target}: it is a mount point (or in use); unmount it first`, ExitCode.failure, { cause: err });
        throw describeSystemError(err, `cannot move ${target} aside`) ?? err;
      }
      replaced = true;
    }
    try {
      await rename(work, target);
    } catch (err) {
      if (replaced) await rename(old, target).catch(() => {}); // cleanup() tries again, and says so
      const code = (err as NodeJS.ErrnoException).code;
      // ENOTDIR: a file or symlink appeared; ENOTEMPTY/EEXIST: a directory.
      if (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOTDIR') throw appeared();
      if (code === 'EBUSY')
        throw new SbkError(`cannot restore at ${target}: it is a mount point (or in use); unmount it first`, ExitCode.failure, { cause: err });
      throw describeSystemError(err, `cannot move the restored container to ${target}`) ?? err;
    }
    this.tmp = undefined; // committed: from here on a failure must not remove the restored container
    // The container is in place: a failure to sync the LXC dir is reported as that, once the
    // temporary directory (with the replaced container) is gone as after any restore.
    let syncError: unknown;
    await fsyncDir(lxcDir).catch((err: unknown) => (syncError = err));
    try {
      await removeTree(tmp);
    } catch (err) {
      log.warn(
        `restored ${name}, but could not remove ${replaced ? 'the replaced container in ' : ''}${tmp}: ${(err as Error).message}; remove it by hand`,
      );
    }
    if (syncError !== undefined) {
      const why = describeSystemError(syncError)?.message ?? (syncError as Error).message;
      throw new SbkError(
        `restored ${last.id.name}: ${name} is in place at ${target}${replaced ? ' (replaced the old one)' : ''}, but syncing ${lxcDir} failed (${why}); ` +
          'run sync: until then a crash may lose the rename',
        ExitCode.failure,
        { cause: syncError },
      );
    }
    log.info(`restored ${last.id.name} as ${name} in ${target}${replaced ? ' (replaced the old one)' : ''}`);
    return { name, dir: target, backup: last.id.name, archives: this.count };
  }

  /**
   * The mount point of a subvolume that was nested in a volume and not backed up: an empty
   * directory with the mode and owner it had. The volume was received from the archive: a symlink
   * or a file on the way is not followed, the directory is then not made (and that is said).
   */
  private async makeNestedDir(backup: string, volumeDir: string, n: { volume: string; path: string; mode: number; uid: number; gid: number }) {
    const { log } = this.opts;
    const where = `${n.volume}/${n.path}`;
    const parts = n.path.split('/');
    let dir = volumeDir;
    for (const c of parts.slice(0, -1)) {
      dir = path.join(dir, c);
      const st = await lstat(dir).catch(() => undefined);
      if (!st?.isDirectory()) {
        log.warn(`${backup}: ${where} was a nested subvolume, not in the backup; ${path.relative(volumeDir, dir)} is not a directory: no empty directory made there`);
        return;
      }
    }
    const dest = path.join(dir, parts[parts.length - 1]!);
    if (await lstat(dest).catch(() => undefined)) return; // the volume has something there already
    // The parent's times are the snapshot's: keep them.
    const parent = await lstat(dir);
    await mkdir(dest);
    if (this.isRoot) await chown(dest, n.uid, n.gid);
    await chmod(dest, n.mode);
    await utimes(dir, parent.atime, parent.mtime);
    log.warn(`${backup}: ${where} was a nested subvolume, not in the backup: made an empty directory there (mode ${n.mode.toString(8).padStart(4, '0')})`);
  }

  /** The config of a container restored under a new name or into another LXC dir. */
  private async rewriteConfig(id: ArchiveId, work: string, target: string, name: string): Promise<void> {
    const { log } = this.opts;
    const file = path.join(work, 'config');
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      log.warn(`${id.name} holds no LXC config (meta/config): restored the volumes only`);
      return;
    }
    const cfg = parseLxcConfig(text);
    const fromDirs: string[] = [];
    if (id.manifest?.source.containerDir) fromDirs.push(id.manifest.source.containerDir);
    let configDir: string | undefined;
    const root = configValue(cfg, 'lxc.rootfs.path', 'lxc.rootfs');
    if (root) {
      try {
        configDir = path.dirname(rootfsPath(root));
        fromDirs.push(configDir);
      } catch {
        // another backend: no path to learn from it
      }
    }
    // Whose config this is: the manifest says; an original Subutai archive has only its file
    // name, which may have been renamed, so there the config's own container directory decides.
    const owner = id.manifest ? id.manifest.container : configDir ? path.basename(configDir) : this.first!.container;
    const renamed = name !== owner;
    const { config, changes } = rewriteConfigForRestore(cfg, { fromDirs, toDir: target, newName: renamed ? name : undefined });
    if (changes.length === 0) return;
    for (const c of changes) log.verbose(`config: ${c}`);
    await writeFile(file, serializeLxcConfig(config));
  }

  /** Kills a running receive and removes the temporary directory with every subvolume in it. */
  private async cleanup(): Promise<void> {
    this.internal.abort(new SbkError('restore failed', ExitCode.failure));
    if (this.receiving) {
      this.receiving.stdin.destroy();
      await this.receiving.done.catch(() => {});
      this.receiving = undefined;
    }
    const tmp = this.tmp;
    if (!tmp) return;
    this.tmp = undefined;
    try {
      // With --force, the old container may sit in old/ if the swap failed half-way: put it back.
      const old = path.join(tmp, 'old');
      const target = path.join(this.opts.lxcDir, this.name!);
      if ((await exists(old)) && !(await exists(target))) await rename(old, target);
      await removeTree(tmp);
    } catch (err) {
      this.opts.log.error(`could not remove ${tmp}: ${(err as Error).message}; remove it by hand (btrfs subvolume delete, then rm -r)`);
    }
  }
}

export function restoreChain(inputs: RestoreInput[], opts: RestoreOptions): Promise<RestoreResult> {
  return new Restore(opts).run(inputs);
}

// ---------------------------------------------------------------------------------------------
// --verify

export interface VerifyOptions {
  log: Log;
  signal: AbortSignal;
  progress?: RestoreProgress;
}

/**
 * Reads every archive whole, as a restore would, but writes nothing: gzip, tar, every sha256
 * against the trailer, and each send stream's commands. Returns the number of archives found
 * good. Every input is tried (a broken file does not hide the state of the next one); with one
 * input its error is thrown, with several each is reported and a summary thrown.
 */
export async function verifyInputs(inputs: RestoreInput[], opts: VerifyOptions): Promise<number> {
  const { log, signal, progress } = opts;
  let good = 0;
  // One per volume, through the chain (see ReceiveGuard).
  const guards = new Map<string, ReceiveGuard>();
  let firstError: SbkError | undefined;
  let failed = 0;
  for (const input of inputs) {
    signal.throwIfAborted();
    let tarStream: Readable | undefined;
    let name = input.source;
    try {
      tarStream = await input.open();
      const onAbort = () => tarStream!.destroy(signal.reason as Error);
      signal.addEventListener('abort', onAbort, { once: true });
      let check: StreamCheck | undefined;
      let volume: string | undefined;
      let entryName = '';
      let bytes = 0;
      let volumes = 0;
      let legacy = false;
      const endVolume = () => {
        check?.end();
        if (volume !== undefined) progress?.end();
        check = undefined;
        volume = undefined;
      };
      try {
        for await (const e of readArchives(tarStream, { legacy: true, source: input.source })) {
          if (e.role === 'manifest') {
            name = e.manifest.name;
            bytes = 0;
            volumes = 0;
            legacy = false;
          } else if (e.manifest.format === 0 && !legacy) {
            legacy = true;
            name = input.nameInfo ? path.basename(input.source).replace(/\.tar\.gz$/, '') : input.source;
            bytes = 0;
            volumes = 0;
            log.warn(`${name} is an archive of the original Subutai tool: it carries no checksums`);
          }
          if (e.role === 'delta') {
            if (e.volume !== volume) {
              endVolume();
              volume = e.volume;
              volumes++;
              if (!guards.has(e.volume!)) guards.set(e.volume!, new ReceiveGuard());
              check = sendStreamCheck(() => `${name}: ${entryName}`, guards.get(e.volume!));
              progress?.volume(name, e.volume!, input, tarStream);
            }
            entryName = e.name;
            for await (const c of e.body) {
              check?.update(c);
              progress?.add(c.length);
              bytes += c.length;
            }
          } else if (e.role === 'trailer') {
            endVolume();
            good++;
            log.info(`${name}: ok (${volumes} volume${volumes === 1 ? '' : 's'}, ${human(bytes)} of send streams)`);
          }
        }
        if (legacy) {
          endVolume();
          good++;
          log.info(`${name}: read whole (${volumes} volume${volumes === 1 ? '' : 's'}, ${human(bytes)}), no checksums to check`);
        }
      } finally {
        signal.removeEventListener('abort', onAbort);
      }
    } catch (err0) {
      if (signal.aborted) throw signal.reason;
      const err = readError(err0, input.source);
      if (!(err instanceof SbkError)) throw err;
      if (inputs.length === 1) throw err;
      log.error(err.message);
      failed++;
      firstError ??= err;
    } finally {
      tarStream?.destroy();
    }
  }
  if (firstError) throw new SbkError(`${failed} of ${inputs.length} inputs failed the check`, firstError.exitCode);
  return good;
}
