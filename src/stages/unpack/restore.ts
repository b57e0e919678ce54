// sbk-unpack's work: receive a chain of archives into a temporary directory on the LXC dir's
// filesystem (workspace.ts), then move the finished container into place in one rename.
//
// Each archive's deltas go straight from the tar reader into `btrfs receive` (receive.ts). An
// incremental finds its parent among the subvolumes received from the archive before it; those
// are deleted once they are no longer a parent. The container directory is built from the last
// archive's meta files and received volumes (container.ts). Any failure or signal deletes the
// temporary directory and every subvolume in it; nothing appears at the target unless the whole
// chain was received and verified. Which archive may follow which is links.ts's followProblem.
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { readArchives, type ArchiveEntry } from '../../formats/archive/archive.js';
import { readError } from '../../formats/archive/open.js';
import type { ChainId } from '../../formats/archive/links.js';
import { removeTree } from '../../system/btrfs.js';
import { startContainer } from '../../system/lxc-control.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import { checkContainerName, formatTime } from '../../core/layout.js';
import type { Log } from '../../core/log.js';
import { checkFollows, routeEntry, type RestoreInput, type RestoreProgress } from './input.js';
import { Receiver, type DeltaSource, type ReceivingArchive } from './receive.js';
import { ContainerDir } from './container.js';
import { Workspace, lxcDirOnBtrfs } from './workspace.js';

export interface RestoreOptions {
  lxcDir: string;
  /** Restore under this name (default: the archived container's). */
  as?: string;
  /** Replace an existing container, once the new one is complete. */
  force?: boolean;
  /** With force: stop the container being replaced right before the swap (and start the restored one if it ran). */
  stop?: boolean;
  /** Seconds a clean stop may take before it is forced. */
  stopTimeoutS?: number;
  /** Start the restored container once it is in place. */
  start?: boolean;
  /** Seconds to wait for another restore of the same target (undefined: fail at once). */
  lockWait?: number;
  log: Log;
  signal: AbortSignal;
  progress?: RestoreProgress;
}

interface ArchiveState extends ReceivingArchive {
  id: ChainId;
}

/**
 * Restores the chain the inputs hold, in order. On failure removes everything it made. An LXC
 * dir that is not on BTRFS gets the container by replay (replay/restore.ts).
 */
export async function restoreChain(inputs: RestoreInput[], opts: RestoreOptions): Promise<void> {
  // An LXC dir that cannot be used is reported where it always was, once the first archive has
  // been read (after what is wrong with the archives themselves): the BTRFS restore's path.
  const onBtrfs = await lxcDirOnBtrfs(opts.lxcDir).catch(() => true);
  if (!onBtrfs) {
    const { restoreByReplay } = await import('./replay/restore.js');
    return restoreByReplay(inputs, opts);
  }
  return new Restore(opts).run(inputs);
}

class Restore {
  /** Made at the first archive, which names the target. */
  private ws?: Workspace;
  private container?: ContainerDir;
  private first?: ChainId;
  private current?: ArchiveState;
  private previous?: ArchiveState;
  /** Archives begun: the next one is received into r<count>/. */
  private count = 0;
  /** The input being read and its tar stream (for progress). */
  private from?: DeltaSource;
  private readonly internal = new AbortController();
  private readonly signal: AbortSignal;
  private readonly receiver: Receiver;

  constructor(private readonly opts: RestoreOptions) {
    this.signal = AbortSignal.any([opts.signal, this.internal.signal]);
    this.receiver = new Receiver({ log: opts.log, signal: this.signal, progress: opts.progress, onFailure: (err) => this.internal.abort(err) });
  }

  async run(inputs: RestoreInput[]): Promise<void> {
    try {
      for (const input of inputs) await this.read(input);
      if (!this.previous) throw new SbkError('no archive in the input', ExitCode.badInput);
      const { stopped } = await this.finish();
      if (this.opts.start || stopped) await this.start(stopped);
    } catch (err) {
      const reason = this.opts.signal.aborted ? this.opts.signal.reason : err;
      await this.cleanup();
      throw reason;
    } finally {
      await this.ws?.release();
    }
  }

  /** Every archive in one input (a file, or a stream of several). */
  private async read(input: RestoreInput): Promise<void> {
    this.signal.throwIfAborted();
    const tarStream = await input.open();
    this.from = { input, tarStream };
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

  private entry(e: ArchiveEntry, input: RestoreInput): Promise<void> {
    return routeEntry(e, input, this.opts.as, {
      current: () => this.current,
      begin: (id) => this.beginArchive(id),
      meta: (m, archive) => this.container!.writeMeta(m, archive),
      delta: (d) => this.receiver.delta(this.current!, d, this.from!),
      end: () => this.endArchive(),
    });
  }

  private async beginArchive(id: ChainId): Promise<void> {
    const { log } = this.opts;
    checkFollows(this.previous?.id, id);
    if (!this.previous) await this.open(id);
    const ws = this.ws!;
    if (id.legacy) log.warn(`${id.name} is an archive of the original Subutai tool: it carries no checksums, so its content cannot be verified`);
    const dir = path.join(ws.dir, `r${this.count++}`);
    await mkdir(dir);
    await this.container!.reset();
    this.current = { id, name: id.name, dir, received: new Map() };
    log.info(`${id.name}: receiving${id.time ? ` (${formatTime(id.time)})` : ''}`);
  }

  /** The first archive names the target: its workspace. */
  private async open(first: ChainId): Promise<void> {
    const { as, lxcDir, force, stop, stopTimeoutS, lockWait, log } = this.opts;
    const name = checkContainerName(as ?? first.container, as ? '--as name' : 'container name');
    this.ws = new Workspace({ lxcDir, force, stop, stopTimeoutS, lockWait, log, signal: this.signal }, name);
    await this.ws.open(first);
    this.container = new ContainerDir(this.ws.work, log, this.signal);
    this.first = first;
  }

  private async endArchive(): Promise<void> {
    const cur = this.current!;
    await this.receiver.end(cur);
    if (cur.received.size === 0) throw new SbkError(`${cur.id.name}: no volume in the archive`, ExitCode.corrupt);
    // The archive before this one was the parent of its incrementals; nothing needs it now.
    if (this.previous) await removeTree(this.previous.dir);
    this.previous = cur;
    this.current = undefined;
  }

  private async finish(): Promise<{ stopped: boolean }> {
    const last = this.previous!;
    const ws = this.ws!;
    const container = this.container!;
    await container.addVolumes(last);
    await container.rewriteConfig(last.id, ws.target, ws.name, this.first!.container);
    await removeTree(last.dir);
    await container.seal(last.id);
    this.signal.throwIfAborted();
    return ws.commit(last.id.name);
  }

  /** The restored container, in place: started (--start, or --stop over one that ran). */
  private async start(stopped: boolean): Promise<void> {
    const { lxcDir, log } = this.opts;
    const { name, target } = this.ws!;
    try {
      await startContainer(lxcDir, name, { log });
    } catch (err) {
      if (!(err instanceof SbkError)) throw err;
      throw new SbkError(
        `${err.message}; the restored container stays in place at ${target}${stopped ? ' (the old one, which was running, is replaced)' : ''}: ` +
          `see why with lxc-start -F -P ${lxcDir} -n ${name}`,
        ExitCode.notStarted,
        { cause: err },
      );
    }
    log.info(`started ${name}: RUNNING`);
  }

  /** Kills a running receive and removes the temporary directory with every subvolume in it. */
  private async cleanup(): Promise<void> {
    this.internal.abort(new SbkError('restore failed', ExitCode.failure));
    await this.receiver.kill();
    await this.ws?.discard();
  }
}
