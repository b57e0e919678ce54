// sbk-unpack --verify: every archive read whole, as a restore reads it, and nothing written:
// gzip or zstd, tar, every sha256 against the trailer, and each volume's send stream command by command,
// each incremental also against the tree its parent leaves (a names-only model of each volume,
// formats/sendstream/tree-model.ts), when its parent was checked before it.
import path from 'node:path';
import type { Readable } from 'node:stream';
import { readArchives } from '../../formats/archive/archive.js';
import { readError } from '../../formats/archive/open.js';
import { SbkError } from '../../core/errors.js';
import { backupName } from '../../core/layout.js';
import type { Log } from '../../core/log.js';
import { formatBytes } from '../../core/progress.js';
import { TreeModel } from '../../formats/sendstream/tree-model.js';
import { Guards, sendStreamCheck, type StreamCheck } from './receive.js';
import type { RestoreInput, RestoreProgress } from './input.js';

export interface VerifyOptions {
  log: Log;
  signal: AbortSignal;
  progress?: RestoreProgress;
}


/**
 * Reads every archive whole, as a restore would, but writes nothing. Returns the number of
 * archives found good. Every input is tried (a broken file does not hide the state of the next
 * one); with one input its error is thrown, with several each is reported and a summary thrown.
 */
export async function verifyInputs(inputs: RestoreInput[], opts: VerifyOptions): Promise<number> {
  const { log, signal } = opts;
  let good = 0;
  // One per volume, through the chain (see ReceiveGuard).
  const guards = new Guards();
  // One per volume, through the chain: the tree each stream leaves, for the next to apply to.
  const models = new Map<string, TreeModel>();
  let firstError: SbkError | undefined;
  let failed = 0;
  for (const input of inputs) {
    signal.throwIfAborted();
    let tarStream: Readable | undefined;
    try {
      tarStream = await input.open();
      await verifyStream(input, tarStream, { guards, models }, opts, () => good++);
    } catch (err0) {
      if (signal.aborted) throw signal.reason;
      const err = readError(err0, input.source);
      if (!(err instanceof SbkError)) throw err;
      models.clear(); // a tree left half-applied is no parent to check the next archive against
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

/** Reads one input's archives (one or more, or an original Subutai one), calling `good` for each found good. */
async function verifyStream(
  input: RestoreInput,
  tarStream: Readable,
  per: { guards: Guards; models: Map<string, TreeModel> },
  opts: VerifyOptions,
  good: () => void,
): Promise<void> {
  const { log, signal, progress } = opts;
  const onAbort = () => tarStream.destroy(signal.reason as Error);
  signal.addEventListener('abort', onAbort, { once: true });
  let name = input.source;
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
  const summary = () => `${volumes} volume${volumes === 1 ? '' : 's'}`;
  try {
    for await (const e of readArchives(tarStream, { legacy: true, source: input.source })) {
      if (e.role === 'manifest') {
        name = e.manifest.name;
        bytes = 0;
        volumes = 0;
        legacy = false;
      } else if (e.manifest.format === 0 && !legacy) {
        legacy = true;
        name = input.nameInfo ? backupName(input.nameInfo.container, input.nameInfo.time, input.nameInfo.full) : input.source;
        bytes = 0;
        volumes = 0;
        log.warn(`${name} is an archive of the original Subutai tool: it carries no checksums`);
      }
      if (e.role === 'delta') {
        if (e.volume !== volume) {
          endVolume();
          volume = e.volume;
          volumes++;
          let model = per.models.get(e.volume!);
          if (!model) per.models.set(e.volume!, (model = new TreeModel()));
          check = sendStreamCheck(() => `${name}: ${entryName}`, per.guards.of(e.volume!), model);
          progress?.start({ archive: name, volume: e.volume!, input, tarStream });
        }
        entryName = e.name;
        for await (const c of e.body) {
          check?.update(c);
          progress?.add(c.length);
          bytes += c.length;
        }
      } else if (e.role === 'trailer') {
        endVolume();
        good();
        log.info(`${name}: ok (${summary()}, ${formatBytes(bytes)} of send streams)`);
      }
    }
    if (legacy) {
      endVolume();
      good();
      log.info(`${name}: read whole (${summary()}, ${formatBytes(bytes)}), no checksums to check`);
    }
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}
