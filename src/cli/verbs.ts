// The one list of sbk's binaries. A verb is registered here and nowhere else: the build bundles
// each `entry` (scripts/bundle.mjs reads this list compiled, dist/cli/verbs.js), the help test
// runs each `module`, the bench times each `name`, and a unit test holds package.json's `bin`,
// the bin/ launchers and man/*.1 to it. No imports: the build reads it without loading a CLI.

export interface Verb {
  /** The command: bin/<name>, package.json bin, man page <name>(1). */
  name: string;
  /** Its CLI module (exports main(argv)), from the package root. */
  module: string;
  /** What esbuild bundles (the module compiled by tsc), from the package root. */
  entry: string;
  /** The bundle bin/<name> loads, from the package root. */
  bundle: string;
  /** Its man page, from the package root. */
  man: string;
}

/** One row per binary: `id` names src/cli/<id>.ts and dist/bundle/<id>.mjs. */
const verb = (id: string): Verb => ({
  name: `sbk-${id}`,
  module: `src/cli/${id}.ts`,
  entry: `dist/cli/${id}.js`,
  bundle: `dist/bundle/${id}.mjs`,
  man: `man/sbk-${id}.1`,
});

/** The stages, in pipe order (backup, then restore). */
export const VERBS: readonly Verb[] = ['snap', 'changelog', 'send', 'pack', 'plan', 'unpack'].map(verb);

/** The shell pipelines composed of the stages (package.json bin too; documented by their --help). */
export const PIPELINES: readonly { name: string; script: string; man: string }[] = [
  'sbk-backup',
  'sbk-restore',
  'sbk-backup-remote',
  'sbk-restore-remote',
  'sbk-demo',
].map((name) => ({ name, script: `pipelines/${name}`, man: `man/${name}.1` }));
