import { runCli } from './common.js';
import { SbkError } from '../lib/errors.js';

export function main(argv: string[]): Promise<void> {
  return runCli(
    {
      name: 'sbk-changelog',
      usage: '$0 [options]',
      options: (y) => y,
      run: async () => {
        throw new SbkError('sbk-changelog is not implemented yet', 1);
      },
    },
    argv,
  );
}
