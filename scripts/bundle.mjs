// `npm run bundle`: the binaries' bundles, one per verb of src/cli/verbs.ts (read compiled from
// dist/, so tsc runs first), sharing chunks (--splitting) so that a binary loads only its code.
import { rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const { VERBS } = await import(new URL('../dist/cli/verbs.js', import.meta.url).href);

rmSync(`${root}/dist/bundle`, { recursive: true, force: true });
await build({
  absWorkingDir: root,
  entryPoints: VERBS.map((v) => v.entry),
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  outdir: 'dist/bundle',
  outExtension: { '.js': '.mjs' },
  sourcemap: true,
  logLevel: 'warning',
  // Bundled CommonJS dependencies call require(): give the ES modules one.
  banner: { js: "import { createRequire as sbkCreateRequire } from 'node:module'; const require = sbkCreateRequire(import.meta.url);" },
});
