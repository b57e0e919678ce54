import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { execa } from 'execa';
import { makeSandbox, makeContainer, sh, unmount, randomish, type Sandbox } from '../helpers/sandbox.js';

describe('probe', () => {
  let sb: Sandbox; let t = '';
  beforeAll(async () => {
    sb = await makeSandbox({ sizeMiB: 256, name: 'probe' });
    const c = await makeContainer(sb, 'c1');
    await writeFile(path.join(c, 'opt/big.bin'), randomish(4 * 1024 * 1024, 2));
    t = path.join(sb.dir, 'tiny');
    await mkdir(t);
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', t]);
  });
  afterAll(async () => { await unmount(t); await sb?.cleanup(); });

  it('full stdout file', async () => {
    const r = await sh('sbk-snap c1', sb);
    await writeFile(path.join(sb.dir, 'rec'), r.stdout);
    for (const cmd of [
      `sbk-send < ${sb.dir}/rec > ${t}/out.tar`,
      `sbk-send < ${sb.dir}/rec | sbk-pack -o - > ${t}/out.tgz`,
      `sbk-send < ${sb.dir}/rec | sbk-pack -o ${t}/out2.tgz`,
      `sbk-send < ${sb.dir}/rec | sbk-pack --store ${t}`,
      `sbk-send < ${sb.dir}/rec | sbk-pack -o - | sbk-pack --store ${t}`,
    ]) {
      await execa('bash', ['-c', `rm -rf ${t}/* ${t}/.??*`]);
      const s = await sh(cmd, sb);
      console.log('CMD', cmd, '\n', s.exitCode, s.stderr, (await execa('ls', ['-a', t])).stdout);
    }
  });
});
