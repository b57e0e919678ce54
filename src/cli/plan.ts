// sbk-plan: a container name in, the archives that restore one of its backups out (one path per
// line, oldest first: the input of sbk-unpack). --list shows every backup and its chain.
import path from 'node:path';
import { runCli, writeOut } from './common.js';
import { SbkError, ExitCode } from '../lib/errors.js';

interface PlanArgs {
  at?: string;
  dir?: string;
  list?: boolean;
  json?: boolean;
}

const human = (n: number) =>
  n >= 1024 ** 3 ? `${(n / 1024 ** 3).toFixed(1)}G` : n >= 1024 ** 2 ? `${(n / 1024 ** 2).toFixed(1)}M` : n >= 1024 ? `${(n / 1024).toFixed(1)}K` : `${n}`;

export function main(argv: string[]): Promise<void> {
  return runCli<PlanArgs>(
    {
      name: 'sbk-plan',
      usage:
        '$0 CONTAINER [--at TIME] [--dir DIR]\n$0 CONTAINER --list [--json]\n\nPrints the archives that restore the newest backup of CONTAINER at or before TIME (default: the latest), one path per line, the Full first: pipe them into sbk-unpack. Archives are linked by the parent their manifests record.',
      options: (y) =>
        y
          .option('at', { type: 'string', describe: 'restore point: unix seconds or ISO 8601 (2024-05-01T12:00:00Z; no zone = local time)' })
          .option('dir', { alias: 'd', type: 'string', describe: 'read archives from DIR (default: the backup dir)' })
          .option('list', { alias: 'l', type: 'boolean', describe: 'list every backup of CONTAINER with its chain state' })
          .option('json', { type: 'boolean', describe: 'NDJSON output, one object per line' }),
      brokenPipeIsOk: true,
      run: async (args, ctx) => {
        const { scanStore, planRestore, parseAtTime, listRows } = await import('../lib/chain.js');
        const { checkContainerName } = await import('../lib/layout.js');
        const names = args._.map(String);
        if (names.length !== 1)
          throw new SbkError(names.length ? `one container at a time (got ${names.join(', ')})` : 'no container given', ExitCode.usage);
        const container = checkContainerName(names[0]!);
        if (args.list && args.at !== undefined) throw new SbkError('--at and --list do not go together', ExitCode.usage);
        const at = args.at === undefined ? undefined : parseAtTime(args.at);
        const dir = path.resolve(args.dir ?? ctx.dirs.backupDir);
        const all = await scanStore(dir, container, { warn: (m) => ctx.log.warn(m) });

        if (args.list) {
          const rows = listRows(all.filter((a) => !(a.manifest && a.problem)));
          if (rows.length === 0) throw new SbkError(`no backup of ${container} in ${dir}`, ExitCode.notFound);
          if (args.json) {
            for (const r of rows) await writeOut(JSON.stringify(r) + '\n');
            return;
          }
          const table = [
            ['DATE', 'NAME', 'KIND', 'SIZE', 'PARENT', 'CHAIN'],
            ...rows.map((r) => [
              r.date,
              r.name,
              (r.legacy ? 'old-' : '') + (r.kind === 'full' ? 'Full' : 'Incr'),
              process.stdout.isTTY ? human(r.size) : String(r.size),
              r.parent ?? '-',
              r.chain === 'complete' ? `complete (${r.length} archive${r.length === 1 ? '' : 's'})` : `${r.chain}: ${r.problem}`,
            ]),
          ];
          const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
          for (const row of table)
            await writeOut(row.map((c, i) => (i === row.length - 1 ? c : c.padEnd(widths[i]!))).join('  ') + '\n');
          return;
        }

        const plan = planRestore(all, container, dir, at);
        if (plan.chain.some((a) => a.legacy))
          ctx.log.warn(`the chain holds archives of the original Subutai tool, linked by name order only; they carry no checksums`);
        ctx.log.verbose(`${plan.target.name}: ${plan.chain.length} archive${plan.chain.length === 1 ? '' : 's'}`);
        for (const a of plan.chain) {
          if (args.json)
            await writeOut(
              JSON.stringify({ path: a.path, name: a.name, time: a.time, kind: a.full ? 'full' : 'incremental', legacy: a.legacy, size: a.size }) + '\n',
            );
          else await writeOut(a.path + '\n');
        }
      },
    },
    argv,
  );
}
