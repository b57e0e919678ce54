// Whether a process is still there: clean-up of what killed runs left (temporary files, partial
// snapshot sets, restore directories) must never touch the work of a run that is alive.

export function isProcessAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
