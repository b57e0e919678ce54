// runCli's one mapping from how a run ended to its exit status (exitCodeFor, src/cli/common.ts).
import { describe, it, expect } from 'vitest';
import { exitCodeFor, type RunEnd } from '../../src/cli/common.js';
import { ExitCode, SbkError } from '../../src/core/errors.js';

const end = (e: Partial<RunEnd>): RunEnd => ({
  outcome: { returned: undefined },
  stopReason: undefined,
  signalExit: ExitCode.interrupted,
  brokenPipeIsOk: false,
  ...e,
});
const sys = (code: string) => Object.assign(new Error(code), { code });

describe('exitCodeFor', () => {
  it('a run that returned: its code, or nothing set', () => {
    expect(exitCodeFor(end({}))).toEqual({ code: undefined, messages: [] });
    expect(exitCodeFor(end({ outcome: { returned: 3 } }))).toEqual({ code: 3, messages: [] });
  });

  it('a signal wins, returned or thrown, without a message', () => {
    for (const outcome of [{ returned: 0 }, { threw: new SbkError('x', ExitCode.corrupt) }])
      expect(exitCodeFor(end({ outcome, stopReason: 'signal', signalExit: 143, stdoutError: new Error('e') }))).toEqual({ code: 143, messages: [] });
  });

  it('a lost reader: 141 and said, unless a listing', () => {
    const msg = 'the reader of stdout went away (broken pipe)';
    for (const outcome of [{ returned: 0 }, { threw: new Error('x') }])
      expect(exitCodeFor(end({ outcome, stopReason: 'pipe' }))).toEqual({ code: 141, messages: [msg] });
    expect(exitCodeFor(end({ outcome: { threw: new Error('x') }, stopReason: 'pipe', brokenPipeIsOk: true }))).toEqual({ code: 0, messages: [] });
    expect(exitCodeFor(end({ outcome: { returned: 2 }, stopReason: 'pipe', brokenPipeIsOk: true }))).toEqual({ code: 2, messages: [] });
  });

  it('a lost reader reported by the write itself (before its error event): the same 141, or 0 for a listing', () => {
    const lost = new SbkError('the reader of stdout went away (broken pipe)', ExitCode.brokenPipe);
    expect(exitCodeFor(end({ outcome: { threw: lost } }))).toEqual({ code: 141, messages: [lost.message] });
    expect(exitCodeFor(end({ outcome: { threw: lost }, brokenPipeIsOk: true }))).toEqual({ code: 0, messages: [] });
  });

  it('a stdout error seen on the way: failure, said once', () => {
    const e = new Error('disk full');
    expect(exitCodeFor(end({ outcome: { returned: 0 }, stdoutError: e }))).toEqual({ code: 1, messages: ['stdout: disk full'] });
    expect(exitCodeFor(end({ outcome: { threw: e }, stdoutError: e })).messages).not.toContain('stdout: disk full');
    expect(exitCodeFor(end({ outcome: { threw: new SbkError('bad', 4) }, stdoutError: e }))).toEqual({ code: 4, messages: ['stdout: disk full', 'bad'] });
  });

  it('errors: an SbkError its code, a system error described, a broken pipe of a listing 0, else a bug', () => {
    expect(exitCodeFor(end({ outcome: { threw: new SbkError('nope', ExitCode.notFound) } }))).toEqual({ code: 5, messages: ['nope'] });
    expect(exitCodeFor(end({ outcome: { threw: sys('ENOSPC') } }))).toEqual({ code: 1, messages: ['no space left on device'] });
    expect(exitCodeFor(end({ outcome: { threw: sys('EPIPE') }, brokenPipeIsOk: true }))).toEqual({ code: 0, messages: [] });
    const bug = exitCodeFor(end({ outcome: { threw: new TypeError('oops') } }));
    expect(bug.code).toBe(ExitCode.bug);
    expect(bug.messages[0]).toMatch(/^internal error \(a bug: please report it\):\nTypeError: oops/);
  });
});
