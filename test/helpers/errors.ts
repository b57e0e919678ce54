// Catching sbk's own errors in unit tests: a check that the code under test fails the way a user
// is meant to see it (an SbkError with its exit code), not with any other exception.
import { expect } from 'vitest';
import { SbkError } from '../../src/core/errors.js';

/** Runs fn and returns the SbkError it throws (fails the test when it throws something else). */
export function sbkErrorOf(fn: () => unknown): SbkError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SbkError);
    return err as SbkError;
  }
  throw new Error('expected an SbkError, nothing was thrown');
}
