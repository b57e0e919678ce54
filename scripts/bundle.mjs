// `npm run bundle`: the binaries' bundles, one per verb of src/cli/verbs.ts (read compiled from
// dist/, so tsc runs first), sharing chunks (--splitting) so that a binary loads only its code.
import { readFileSync, rmSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = fileURLToPath(new URL('..', import.meta.url));
const { VERBS } = await import(new URL('../dist/cli/verbs.js', import.meta.url).href);

/**
 * string-width (yargs' help layout, in every stage's bundle) builds an Intl.Segmenter and
 * Unicode property regular expressions when it is imported: about 35 ms of CPU per process
 * (`\p{RGI_Emoji}` ~18 ms, the segmenter ~15 ms), paid by every real run though only help and
 * usage text use them. Each such top-level `const` becomes a getter that builds it on first use
 * (test/unit/bundle-startup.test.ts holds the bundle to it and to yargs' own layout).
 */
const deferStringWidthTables = {
  name: 'defer-string-width-tables',
  setup(b) {
    b.onLoad({ filter: /[\\/]node_modules[\\/](?:.*[\\/])?string-width[\\/]index\.js$/ }, (args) => {
      const names = [];
      let contents = readFileSync(args.path, 'utf8').replace(
        /^const (\w+) = (new Intl\.Segmenter\(\)|\/.*\\p\{.*\/[a-z]*);$/gm,
        (_, name, init) => {
          names.push(name);
          return `let lazy_${name};\nconst get_${name} = () => (lazy_${name} ??= ${init});`;
        },
      );
      // `lazy_x` and `get_x` do not match \bx\b: only the uses are rewritten.
      for (const name of names) contents = contents.replace(new RegExp(`(?<![.\\w$])${name}\\b(?![\\w$(])`, 'g'), `get_${name}()`);
      return { contents, loader: 'js', warnings: names.length ? [] : [{ text: `${args.path}: no eager table found to defer (scripts/bundle.mjs)` }] };
    });
  },
};

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
  plugins: [deferStringWidthTables],
  // Bundled CommonJS dependencies call require(): give the ES modules one.
  banner: { js: "import { createRequire as sbkCreateRequire } from 'node:module'; const require = sbkCreateRequire(import.meta.url);" },
});
