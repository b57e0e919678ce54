// The verb registry (src/cli/verbs.ts) is the one list of binaries: package.json, the bin/
// launchers and the man pages must agree with it.
import { describe, it, expect } from 'vitest';
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';
import { VERBS, PIPELINES } from '../../src/cli/verbs.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const pkg = JSON.parse(readFileSync(path.join(root, 'package.json'), 'utf8')) as { bin: Record<string, string>; man: string[] };

describe('verb registry', () => {
  it('package.json bin: each verb its launcher, each pipeline its script, nothing else', () => {
    const want = Object.fromEntries([...VERBS.map((v) => [v.name, `bin/${v.name}`]), ...PIPELINES.map((p) => [p.name, p.script])]);
    expect(pkg.bin).toEqual(want);
  });

  it('bin/: one launcher per verb, loading its bundle', () => {
    expect(readdirSync(path.join(root, 'bin')).sort()).toEqual(VERBS.map((v) => v.name).sort());
    for (const v of VERBS) {
      const text = readFileSync(path.join(root, 'bin', v.name), 'utf8');
      expect(text, v.name).toContain(`from '../${v.bundle}'`);
      expect(existsSync(path.join(root, v.module)), v.module).toBe(true);
    }
  });

  it('man/*.1: one page per verb and pipeline, all listed in package.json', () => {
    const pages = readdirSync(path.join(root, 'man')).filter((f) => f.endsWith('.1'));
    expect(pages.map((f) => `man/${f}`).sort()).toEqual([...VERBS, ...PIPELINES].map((v) => v.man).sort());
    for (const v of [...VERBS, ...PIPELINES]) expect(pkg.man).toContain(v.man);
    for (const p of PIPELINES) expect(existsSync(path.join(root, p.script)), p.script).toBe(true);
  });
});
