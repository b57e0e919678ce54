// The source tree's tiers (doc/ARCHITECTURE.md): cli → stages → system → formats → core. Every
// import points down, a stage never imports another stage, and every module says what it is.
import { describe, it, expect } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { ROOT } from '../helpers/sandbox.js';

const TIERS = ['core', 'formats', 'system', 'stages', 'cli'];
const SRC = path.join(ROOT, 'src');

function modules(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? modules(path.join(dir, e.name)) : e.name.endsWith('.ts') ? [path.join(dir, e.name)] : [],
  );
}

/** [tier, stage folder] of a path under src/. */
function place(file: string): [string, string | undefined] {
  const parts = path.relative(SRC, file).split(path.sep);
  return [parts[0]!, parts[0] === 'stages' ? parts[1] : undefined];
}

describe('the source tree', () => {
  const files = modules(SRC);

  it('has only the tiers as top-level folders', () => {
    for (const f of files) expect(TIERS, path.relative(SRC, f)).toContain(place(f)[0]);
  });

  it('imports only down the tiers, and never from one stage into another', () => {
    const against: string[] = [];
    for (const f of files) {
      const [tier, stage] = place(f);
      for (const m of readFileSync(f, 'utf8').matchAll(/(?:from|import)\s*\(?\s*'(\.[^']+)'/g)) {
        const target = path.resolve(path.dirname(f), m[1]!);
        const [ttier, tstage] = place(target);
        if (TIERS.indexOf(ttier) > TIERS.indexOf(tier)) against.push(`${path.relative(SRC, f)} -> ${m[1]} (up)`);
        else if (stage && tstage && stage !== tstage) against.push(`${path.relative(SRC, f)} -> ${m[1]} (another stage)`);
      }
    }
    expect(against).toEqual([]);
  });

  it('opens every module with a comment that says what it is', () => {
    const silent = files.filter((f) => !/^\/\//.test(readFileSync(f, 'utf8')));
    expect(silent.map((f) => path.relative(SRC, f))).toEqual([]);
  });
});
