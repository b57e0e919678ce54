// What a replayed tree could not hold on disk: owners a non-root user cannot give, device nodes
// it cannot make (an empty file holds their place), privileged xattrs. The modes that read the
// tree (--tar, --list) take these from the overlay instead of from the disk.

export interface MetaOverlayEntry {
  uid?: number;
  gid?: number;
  /** Permission bits of the file as replayed (with `kind`: of the node it stands for). */
  mode?: number;
  rdev?: number;
  kind?: 'chr' | 'blk' | 'fifo' | 'sock';
  xattrs?: Record<string, Buffer>;
}

/** What the tree on disk could not hold (non-root: owners, device nodes, privileged xattrs), by
 *  path relative to the container dir ("rootfs/etc/x"; bytes as latin1 chars, as send streams name them). */
export type MetaOverlay = Map<string, MetaOverlayEntry>;

/** One line for the user: what the overlay holds, by kind. */
export function describeOverlay(overlay: MetaOverlay): string | undefined {
  let owners = 0;
  let nodes = 0;
  let xattrs = 0;
  for (const e of overlay.values()) {
    if (e.uid !== undefined) owners++;
    if (e.kind) nodes++;
    if (e.xattrs && Object.keys(e.xattrs).length) xattrs++;
  }
  const parts = [
    owners && `the owners of ${owners} file${owners === 1 ? '' : 's'}`,
    nodes && `${nodes} device node${nodes === 1 ? '' : 's'} (empty files in their place)`,
    xattrs && `the privileged xattrs (security.*, trusted.*) of ${xattrs} file${xattrs === 1 ? '' : 's'}`,
  ].filter(Boolean);
  return parts.length ? parts.join(', ') : undefined;
}
