// What the restore tests share: the committed fixture archives, the traces a restore leaves in
// the LXC dir, and a pid known to be dead (the owner of a dead restore's leftovers).
import { execa } from 'execa';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { ROOT } from './sandbox.js';

export const FIXTURE_ARCHIVES = path.join(ROOT, 'test/fixtures/archives');
/** The Full of the fixture container fx (rootfs and home; hostname "fx"). */
export const FX_FULL = path.join(FIXTURE_ARCHIVES, 'fx_1795673813_Full.tar.gz');

/** The temporary directories of restores (live or dead) in `lxcDir`: `.sbk-restore-<name>-<pid>`. */
export async function restoreLeftovers(lxcDir: string): Promise<string[]> {
  return (await readdir(lxcDir)).filter((n) => n.startsWith('.sbk-restore-'));
}

/** The pid of a process that has exited (and been reaped): the owner of a dead restore. */
export async function deadPid(): Promise<number> {
  const p = execa('true');
  const pid = p.pid!;
  await p;
  return pid;
}
