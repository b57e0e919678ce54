// How sbk-snap holds a container still while it snapshots its volumes, so that the set is one
// moment of the whole container (a database writing to /var and /opt is never caught between
// two volumes): a running container is flushed and frozen for the snapshots only (the default),
// or stopped and started again (--stop), or snapshotted live (--no-freeze). A container LXC
// does not run (or no LXC at all) is snapshotted as it is. The record says which (`consistency`).
import { SbkError, ExitCode } from '../../core/errors.js';
import type { Log } from '../../core/log.js';
import type { Consistency } from '../../formats/record.js';
import { queryContainerState, type ContainerVolumes } from '../../system/lxc.js';
import { flushFilesystems, guardRestart, startContainer, stopContainer, withContainerFrozen } from '../../system/lxc-control.js';

/** auto: freeze a running container; freeze: the same, and fail when it cannot be done; stop: --stop; live: --no-freeze. */
export type HoldMode = 'auto' | 'freeze' | 'stop' | 'live';

export interface HoldOptions {
  hold: HoldMode;
  /** --freeze-timeout: the longest a container stays frozen (seconds). */
  freezeTimeoutS: number;
  log: Log;
  signal?: AbortSignal;
}

/** Seconds a clean stop (--stop) may take before the container is killed. */
export const STOP_TIMEOUT_S = 60;

/** How a set was taken, for its record. */
export interface HowTaken {
  consistency: Consistency;
  /** How long sbk kept the container frozen (ms); absent when sbk did not freeze it. */
  frozenMs?: number;
}

/**
 * Test seam: keeps the container frozen (or stopped) this long before the snapshots
 * (SBK_TEST_HOLD_MS), so that the tests can kill sbk-snap or pass the freeze limit at a moment
 * they choose.
 */
function holdForTests(signal?: AbortSignal): Promise<void> {
  const ms = Number(process.env.SBK_TEST_HOLD_MS ?? 0);
  if (!(ms > 0)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => (clearTimeout(t), reject(signal.reason)), { once: true });
  });
}

/**
 * Runs `take` (the snapshots) with the container held as `opts.hold` says, and says how. Under
 * --stop a container that was running is started again however `take` ends.
 */
export async function snapshotsHeldStill(
  cv: ContainerVolumes,
  lxcDir: string,
  opts: HoldOptions,
  take: (signal?: AbortSignal) => Promise<void>,
): Promise<HowTaken> {
  const { log, signal } = opts;
  const { container } = cv;
  const q = await queryContainerState(lxcDir, container, signal);
  const asked = opts.hold === 'freeze' ? '--freeze' : opts.hold === 'stop' ? '--stop' : undefined;
  if (!q || q.state === 'NO-LXC') {
    // It cannot be running here: as it is, unless a freeze or stop was asked for.
    if (asked) {
      const why = q ? 'LXC is not installed (no lxc-info)' : `LXC does not know the container in ${lxcDir}`;
      throw new SbkError(`${asked}: cannot ${asked.slice(2)} ${container}: ${why}`, ExitCode.failure);
    }
    log.verbose(`${container}: ${q ? 'LXC is not installed' : 'not known to LXC'}: it cannot be running; snapshots as it is`);
    await take(signal);
    return { consistency: 'stopped' };
  }
  if (!('lxcPath' in q) || q.state === 'STOPPED') {
    await take(signal);
    return { consistency: 'stopped' };
  }
  const lxcPath = q.lxcPath;
  if (opts.hold === 'live') {
    log.verbose(`${container} is ${q.state}: snapshots taken live (--no-freeze)`);
    await take(signal);
    return { consistency: 'live' };
  }
  if (opts.hold === 'stop') return stopAround(container, lxcPath, q.state, log, take, signal);
  if (q.state === 'FROZEN') {
    // Frozen by someone else: still, and theirs to thaw.
    log.verbose(`${container} is FROZEN (not by sbk): snapshots taken as it is, left frozen`);
    await take(signal);
    return { consistency: 'frozen' };
  }
  await flushFilesystems(
    cv.volumes.map((v) => v.source),
    signal,
  );
  const { frozenMs } = await withContainerFrozen(
    lxcPath,
    container,
    {
      timeoutS: opts.freezeTimeoutS,
      timeoutError: () =>
        new SbkError(
          `frozen for longer than --freeze-timeout ${opts.freezeTimeoutS} s: thawed, no backup made (raise --freeze-timeout, or use --stop or --no-freeze)`,
          ExitCode.failure,
        ),
      log,
      signal,
    },
    async (frozen) => {
      await holdForTests(frozen);
      await take(frozen);
    },
  );
  return { consistency: 'frozen', frozenMs };
}

/** --stop: stops a running container, takes the snapshots, starts it again (also when they fail). */
async function stopAround(
  container: string,
  lxcPath: string,
  state: string,
  log: Log,
  take: (signal?: AbortSignal) => Promise<void>,
  signal?: AbortSignal,
): Promise<HowTaken> {
  // If this process dies while the container is down, the guard starts it again.
  const guard = await guardRestart(lxcPath, container, STOP_TIMEOUT_S + 60);
  let taken = false;
  try {
    await stopContainer(lxcPath, container, { timeoutS: STOP_TIMEOUT_S, log });
    await holdForTests(signal);
    await take(signal);
    taken = true;
  } finally {
    // Started again whatever happened: a stop asked for the backup must not outlast it.
    try {
      await startContainer(lxcPath, container, { log });
      log.verbose(`${container}: started again (it was ${state})`);
    } catch (err) {
      // The snapshots' own failure, if any, is the one thrown; this one is said here.
      if (!taken) log.error(`${container}: ${(err as Error).message}`);
      else throw err;
    } finally {
      await guard.disarm();
    }
  }
  return { consistency: 'stopped' };
}
