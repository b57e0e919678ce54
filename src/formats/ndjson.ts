// Reading NDJSON streams (backup records, receipts): refuses other kinds of input up front,
// and names the line of anything malformed. Blank lines are ignored.
import type { Readable } from 'node:stream';
import split2 from 'split2';
import { SbkError, ExitCode } from '../core/errors.js';
import { peekStream, sniff, describeKind } from './input.js';

export interface NdjsonOptions {
  /** What the stream should hold, for the message on other input: 'backup records (sbk-snap output)'. */
  what: string;
  /** One item, for line messages: 'record' → "record on line 3: …". */
  noun: string;
  maxLength: number;
}

export function lineError(noun: string, line: number, msg: string): SbkError {
  return new SbkError(`${noun} on line ${line}: ${msg}`, ExitCode.badInput);
}

/** Yields each line's parsed JSON with its line number, as the lines arrive. */
export async function* readJsonLines(source: Readable, opts: NdjsonOptions): AsyncGenerator<{ value: unknown; line: number }> {
  const { head, stream: input } = await peekStream(source, 512);
  const kind = sniff(head);
  if (kind === 'empty') return;
  // Blank lines are ignored, so input of blank lines only holds nothing (it is not "text").
  const blank = kind === 'text' && /^[ \t\r\n]*$/.test(head.toString('latin1'));
  if (kind !== 'ndjson' && !blank)
    throw new SbkError(`expected NDJSON ${opts.what} on stdin, got ${describeKind[kind]}`, ExitCode.badInput);
  // A line cut short is malformed JSON (an object cannot be cut and stay valid), so a missing
  // final newline needs no check of its own.
  let line = 0;
  let split = 0; // lines split2 has cut (it may be ahead of the loop)
  const lines = input.pipe(split2((l: string) => (split++, l), { maxLength: opts.maxLength }));
  // pipe() does not pass errors on: without this a failing input would leave the loop waiting.
  input.on('error', (err) => lines.destroy(err));
  try {
    for await (const text of lines as AsyncIterable<string>) {
      line++;
      if (text.trim() === '') continue;
      let value: unknown;
      try {
        value = JSON.parse(text);
      } catch (err) {
        throw lineError(opts.noun, line, `malformed JSON (${(err as Error).message})`);
      }
      yield { value, line };
    }
  } catch (err) {
    // split2's limit: a "line" this long is not what we read.
    if (!(err instanceof SbkError) && (err as Error | undefined)?.message === 'maximum buffer reached')
      throw lineError(opts.noun, split + 1, `longer than ${opts.maxLength} bytes (not NDJSON ${opts.what.split(' (')[0]}?)`);
    throw err;
  }
}
