// `--help` is answered without loading yargs (src/cli/help.ts), which must print exactly what
// yargs would: for every binary, at several widths, both texts are compared here.
import { describe, it, expect, vi } from 'vitest';
import type { CliSpec } from '../../src/cli/common.js';

const specs: CliSpec<unknown>[] = [];
vi.mock(import('../../src/cli/common.js'), async (importOriginal) => {
  const real = await importOriginal();
  return {
    ...real,
    // Each binary's main() hands its spec to runCli: keep it instead of running.
    runCli: async (spec: CliSpec<unknown>) => {
      specs.push(spec);
    },
  };
});

const { helpWithYargs, helpWithoutYargs } = await import('../../src/cli/common.js');
const { recordOptions, renderHelp } = await import('../../src/cli/help.js');
const { VERBS } = await import('../../src/cli/verbs.js');
for (const verb of VERBS) {
  const m = (await import(`../../${verb.module}`)) as { main: (argv: string[]) => Promise<void> };
  await m.main(['--help']);
}

describe('--help without yargs', () => {
  it('has the spec of every binary', () => {
    expect(specs.map((s) => s.name).sort()).toEqual(VERBS.map((v) => v.name).sort());
  });

  for (const width of [100, 80, 60, 200]) {
    it(`prints what yargs prints, width ${width}`, async () => {
      for (const spec of specs) {
        const fast = await helpWithoutYargs(spec, width);
        const slow = await helpWithYargs(spec, width);
        expect(slow).toContain('--lxc-dir');
        expect(fast, `${spec.name} fell back to yargs`).toBeDefined();
        expect(fast, spec.name).toBe(slow);
      }
    });
  }

  it('lists every option, its alias and type (sbk-pack)', async () => {
    const text = (await helpWithoutYargs(specs.find((s) => s.name === 'sbk-pack')!, 100))!;
    for (const s of ['--lxc-dir', '-q, --quiet', '-h, --help', '--version', '-o, --output', '-T, --threads', '--progress', '[default: "gzip"]'])
      expect(text).toContain(s);
  });

  it('gives up (yargs renders) on what it does not know', () => {
    expect(recordOptions((y: any) => y.option('a', { type: 'string' }).command('x', 'y')).unsupported).toBe('.command()');
    expect(recordOptions((y: any) => y.option('a', { type: 'string', demandOption: true })).unsupported).toBe('option setting demandOption');
    expect(recordOptions((y: any) => y.option('a', { type: 'string' }).conflicts('a', 'b').check(() => true)).unsupported).toBeUndefined();
    const spec = { name: 'x', usage: '$0 — non-ASCII', epilog: '', width: 80, options: [] };
    expect(renderHelp(spec)).toBeUndefined();
  });
});
