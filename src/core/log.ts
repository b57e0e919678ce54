// Messages on stderr, prefixed with the binary's name so that several stages in one pipe can be
// told apart. -q keeps only errors; -v adds detail.

export type Verbosity = 0 | 1 | 2; // quiet, normal, verbose

export class Log {
  constructor(
    readonly prog: string,
    public verbosity: Verbosity = 1,
  ) {}
  error(msg: string): void {
    process.stderr.write(`${this.prog}: ${msg}\n`);
  }
  warn(msg: string): void {
    if (this.verbosity >= 1) process.stderr.write(`${this.prog}: warning: ${msg}\n`);
  }
  info(msg: string): void {
    if (this.verbosity >= 1) process.stderr.write(`${this.prog}: ${msg}\n`);
  }
  verbose(msg: string): void {
    if (this.verbosity >= 2) process.stderr.write(`${this.prog}: ${msg}\n`);
  }
}
