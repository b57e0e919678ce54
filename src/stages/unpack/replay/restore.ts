// The restore of a container into an LXC dir that is not on BTRFS: the chain replayed into the
// restore's workspace (the same locks, leftovers sweep, --force and one rename into place as the
// BTRFS restore), its volumes plain directories, and the config pointed at them
// (lxc.rootfs.path = dir:…; the mount entries name the volume directories), so lxc-start runs it.
import { checkContainerName } from '../../../core/layout.js';
import type { RestoreInput } from '../input.js';
import type { RestoreOptions } from '../restore.js';
import { ContainerDir } from '../container.js';
import { Workspace } from '../workspace.js';
import { replayChain, describeOverlay } from './replay.js';

export async function restoreByReplay(inputs: RestoreInput[], opts: RestoreOptions): Promise<void> {
  const { lxcDir, as, force, lockWait, log, signal, progress } = opts;
  log.info(`${lxcDir} is not on BTRFS: restoring by replay into plain directories`);
  let ws: Workspace | undefined;
  try {
    const result = await replayChain(
      inputs,
      async (first) => {
        const name = checkContainerName(as ?? first.container, as ? '--as name' : 'container name');
        ws = new Workspace({ lxcDir, force, lockWait, log, signal, replay: true }, name);
        await ws.open(first);
        return ws.work;
      },
      {
        log,
        signal,
        progress,
        as,
        beforeSeal: async (r) => {
          const w = ws!;
          await new ContainerDir(w.work, log, signal).rewriteConfig(r.last, w.target, w.name, r.first.container, { plainDirs: true });
        },
      },
    );
    const lost = describeOverlay(result.overlay);
    if (lost) log.warn(`not root: the restored container lacks ${lost}`);
    signal.throwIfAborted();
    await ws!.commit(result.last.name);
  } catch (err) {
    await ws?.discard();
    throw signal.aborted ? signal.reason : err;
  } finally {
    await ws?.release();
  }
}
