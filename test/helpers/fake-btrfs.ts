// A `btrfs` put first on PATH that runs the real one except where a test makes it fail, stall or
// leave a trace: how the e2e tests reach the failure paths of send, receive and delete on a real
// filesystem without breaking it.
import { execa } from 'execa';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ROOT } from './sandbox.js';

/**
 * Writes `<dir>/btrfs`: a bash script made of `lines(real)` (given the real btrfs's path), then
 * `exec real "$@"` for everything they let through. Returns `dir`.
 */
export async function fakeBtrfs(dir: string, lines: (real: string) => string[]): Promise<string> {
  const real = (await execa('bash', ['-c', 'command -v btrfs'])).stdout.trim();
  await mkdir(dir, { recursive: true });
  const script = ['#!/bin/bash', ...lines(real), `exec ${real} "$@"`].join('\n');
  await writeFile(path.join(dir, 'btrfs'), script + '\n');
  await chmod(path.join(dir, 'btrfs'), 0o755);
  return dir;
}

/** The `env` of sh() that puts `bin` (a fake btrfs) before everything, sbk's binaries next. */
export const withBin = (bin: string) => ({ env: { PATH: `${bin}:${path.join(ROOT, 'bin')}:${process.env.PATH}` } });
