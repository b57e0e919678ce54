// Which archive may follow which in a chain: an incremental names its parent by name and by the
// UUID of every volume's parent snapshot. One rule for sbk-plan's chains and sbk-unpack's input.
import { type Manifest } from './archive.js';

/**
 * What an archive is for the order of a restore's input: from its manifest, or, for an archive of
 * the original Subutai tool (no manifest), only from its file name (`legacy`).
 */
export interface ChainId {
  manifest?: Manifest;
  legacy: boolean;
  container: string;
  name: string;
  full: boolean;
  time: number;
}

export const chainId = (m: Manifest): ChainId => ({ manifest: m, legacy: false, container: m.container, name: m.name, full: m.full, time: m.time });

type Ordered = Pick<ChainId, 'container' | 'name' | 'full' | 'time'>;

/**
 * The rule every archive after another in a chain meets, whatever else is known of the two: the
 * same container, an incremental, and newer. Both linkProblem and followProblem start here, so
 * they say each of these the same way.
 */
function orderProblem(next: Ordered, prev: Ordered): string | undefined {
  if (next.container !== prev.container) return `${next.name} is a backup of ${next.container}, not of ${prev.container}: one chain at a time`;
  if (next.full) return `${next.name} is a Full backup, not an incremental that can follow ${prev.name}`;
  if (next.time <= prev.time) return `${prev.name} is not older than ${next.name}: give the archives oldest first`;
  return undefined;
}

/**
 * Why `child` cannot be restored on top of `parent`, or undefined when it can: the order rule,
 * then the parent's name must be the one the child records, and every volume sent incrementally
 * must have been sent against the parent's snapshot of that volume (same UUID). A volume with no
 * parent UUID was sent whole and needs nothing.
 */
export function linkProblem(child: Manifest, parent: Manifest): string | undefined {
  const order = orderProblem(child, parent);
  if (order) return order;
  if (!child.parent || child.parent.name !== parent.name)
    return `the parent of ${child.name} is ${child.parent?.name ?? 'none'}, not ${parent.name}`;
  for (const v of child.volumes) {
    if (v.parentUuid === null) continue;
    const pv = parent.volumes.find((x) => x.name === v.name);
    if (!pv) return `volume ${v.name} of ${child.name} was sent against a parent, but ${parent.name} has no volume ${v.name}`;
    if (pv.uuid !== v.parentUuid)
      return `volume ${v.name} of ${child.name} was sent against snapshot ${v.parentUuid}, but the ${v.name} of ${parent.name} is ${pv.uuid} (another backup with the same name?)`;
  }
  return undefined;
}

/**
 * Why `next` cannot come after `prev` (undefined: it is the first) in one restore, or undefined
 * when it can. Two sbk archives are held to linkProblem; original Subutai archives, which name no
 * parent, only to the order rule.
 */
export function followProblem(prev: ChainId | undefined, next: ChainId): string | undefined {
  if (!prev) return next.full ? undefined : `${next.name} is an incremental backup: a restore starts at its Full (sbk-plan ${next.container} | sbk-unpack)`;
  if (next.legacy !== prev.legacy && next.container === prev.container)
    return `${next.name} cannot follow ${prev.name}: original Subutai archives and sbk archives do not chain`;
  const problem = next.manifest && prev.manifest ? linkProblem(next.manifest, prev.manifest) : orderProblem(next, prev);
  return problem && `${next.name} cannot follow ${prev.name}: ${problem}`;
}
