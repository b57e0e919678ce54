// Which archive may follow which in a chain: an incremental names its parent by name and by the
// UUID of every volume's parent snapshot. One rule for sbk-plan's chains and sbk-unpack's input.
import { type Manifest } from './archive.js';

/**
 * Why `child` cannot be restored on top of `parent`, or undefined when it can: the parent's
 * name must be the one the child records, and every volume sent incrementally must have been
 * sent against the parent's snapshot of that volume (same UUID). A volume with no parent UUID
 * was sent whole and needs nothing.
 */
export function linkProblem(child: Manifest, parent: Manifest): string | undefined {
  if (child.full) return `${child.name} is a Full backup, not an incremental`;
  if (child.container !== parent.container)
    return `${child.name} is a backup of ${child.container}, ${parent.name} of ${parent.container}`;
  if (!child.parent || child.parent.name !== parent.name)
    return `the parent of ${child.name} is ${child.parent?.name ?? 'none'}, not ${parent.name}`;
  if (parent.time >= child.time) return `${parent.name} is not older than ${child.name}`;
  for (const v of child.volumes) {
    if (v.parentUuid === null) continue;
    const pv = parent.volumes.find((x) => x.name === v.name);
    if (!pv) return `volume ${v.name} of ${child.name} was sent against a parent, but ${parent.name} has no volume ${v.name}`;
    if (pv.uuid !== v.parentUuid)
      return `volume ${v.name} of ${child.name} was sent against snapshot ${v.parentUuid}, but the ${v.name} of ${parent.name} is ${pv.uuid} (another backup with the same name?)`;
  }
  return undefined;
}
