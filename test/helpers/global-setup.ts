// Runs once per test run: builds dist/ (the binaries run the compiled code) and, at the end,
// unmounts any sandbox a crashed test left behind (each test also tears down its own).
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { sweepSandboxes } from './sandbox.js';

const root = fileURLToPath(new URL('../..', import.meta.url));

export function setup(): void {
  process.env.SBK_TEST_RUN = String(process.pid);
  // tsc, then the bundles in dist/bundle that bin/sbk-* load (see package.json's build script).
  execFileSync('npm', ['run', '--silent', 'build'], { cwd: root, stdio: 'inherit' });
}

export async function teardown(): Promise<void> {
  await sweepSandboxes();
}
