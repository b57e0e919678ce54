// What loading the binaries' bundles (dist/bundle, scripts/bundle.mjs) costs at start-up: every
// stage of a backup loads yargs, so what yargs' chunk builds when it is imported is paid four
// times per backup. string-width (yargs' help layout) builds an Intl.Segmenter and Unicode
// property regular expressions (\p{RGI_Emoji} alone ~18 ms of CPU) at import: the bundle builds
// them on first use instead, which only printing help or a usage error does.
import { describe, it, expect } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

const root = fileURLToPath(new URL('../..', import.meta.url));
const bundleDir = path.join(root, 'dist', 'bundle');

/** The bundle files that carry a copy of string-width. */
const stringWidthChunks = () =>
  readdirSync(bundleDir)
    .filter((f) => f.endsWith('.mjs'))
    .filter((f) => readFileSync(path.join(bundleDir, f), 'utf8').includes('node_modules/string-width/index.js'));

/**
 * Imports `file` in a fresh node with Intl.Segmenter and RegExp counted: how many segmenters and
 * Unicode property expressions (`\p{…}`) importing it built.
 */
function builtAtImport(file: string): { segmenters: number; unicodeRegExps: number } {
  const script = `
    const counts = { segmenters: 0, unicodeRegExps: 0 };
    const Seg = Intl.Segmenter;
    Intl.Segmenter = class extends Seg { constructor(...a) { super(...a); counts.segmenters++; } };
    const R = RegExp;
    globalThis.RegExp = new Proxy(R, { construct(t, a, n) { if (String(a[0]).includes('\\\\p{')) counts.unicodeRegExps++; return Reflect.construct(t, a, n); } });
    await import(${JSON.stringify(file)});
    process.stdout.write(JSON.stringify(counts));`;
  return JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' })) as {
    segmenters: number;
    unicodeRegExps: number;
  };
}

describe('bundle start-up', () => {
  it("yargs' chunk builds no Intl.Segmenter nor Unicode property RegExp when imported", () => {
    const chunks = stringWidthChunks();
    expect(chunks.length).toBeGreaterThan(0);
    for (const f of chunks) expect(builtAtImport(path.join(bundleDir, f)), f).toEqual({ segmenters: 0, unicodeRegExps: 0 });
  });

  it('lays out help as the yargs of node_modules does, wide and emoji text too (string-width builds them on first use)', () => {
    const [chunk] = stringWidthChunks();
    const describe = ['LXC 目录 😀 👩‍👩‍👧 e\u0301 dir', '１２３ wide ✔︎ ｶﾞ'];
    const script = [
      `const describe = ${JSON.stringify(describe)};`,
      "const help = (yargs) => yargs([]).scriptName('t').option('lxc-dir', { type: 'string', describe: describe[0] }).option('x', { describe: describe[1] }).wrap(40).getHelp();",
      `const bundled = (await import(${JSON.stringify(path.join(bundleDir, chunk))})).default;`,
      "const original = (await import('yargs')).default;",
      'process.stdout.write(JSON.stringify([await help(bundled), await help(original)]));',
    ].join('\n');
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', cwd: root });
    const [bundled, original] = JSON.parse(out) as string[];
    expect(bundled).toContain('--lxc-dir');
    expect(bundled).toBe(original);
  });

  it('the archive writer and manifest (all of the format sbk-send uses) load no zlib and no codec', () => {
    const mods = ['formats/archive/writer.js', 'formats/archive/manifest.js', 'formats/input.js'].map((m) => path.join(root, 'dist', m));
    const script = [
      `for (const m of ${JSON.stringify(mods)}) await import(m);`,
      'process.stdout.write(JSON.stringify(process.moduleLoadList.filter((m) => / zlib$/.test(m))));',
    ].join('\n');
    expect(JSON.parse(execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' }))).toEqual([]);
  });
});
