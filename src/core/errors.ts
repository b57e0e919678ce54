// Errors and exit codes shared by every sbk binary (documented in man/sbk.7, EXIT STATUS).
// A user error (SbkError) is printed as one line without a stack; anything else is a bug and
// is printed with its stack and exit code 70.

export const ExitCode = {
  ok: 0,
  failure: 1, // an operation failed (btrfs, I/O, disk full, a child process)
  usage: 2, // bad command line
  badInput: 3, // the input stream is not what this stage reads (wrong kind, malformed)
  corrupt: 4, // data failed a check: checksum, truncation, missing trailer
  notFound: 5, // no such container, backup, parent or archive
  conflict: 6, // the target already exists (archive, container, snapshot set)
  locked: 7, // another run holds the lock
  notStarted: 8, // the container is restored in place, but LXC did not start it (sbk-unpack --start)
  bug: 70, // an internal error: please report it with the stack
  // The reader of stdout went away: 128 + SIGPIPE, as a process killed by SIGPIPE reports, so
  // that a pipeline can tell a stage that only lost its reader from the one that failed.
  brokenPipe: 141,
  interrupted: 130, // SIGINT
  terminated: 143, // SIGTERM
} as const;

export type ExitCodeValue = (typeof ExitCode)[keyof typeof ExitCode];

export class SbkError extends Error {
  readonly exitCode: ExitCodeValue;
  constructor(message: string, exitCode: ExitCodeValue = ExitCode.failure, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SbkError';
    this.exitCode = exitCode;
  }
}

/**
 * A store (an S3 server) that could not be reached or refused the request, or a connection cut
 * mid-transfer: the run fails as a whole, never judges the archives it could not read.
 */
export class StoreUnavailableError extends SbkError {}

export const usageError = (m: string) => new SbkError(m, ExitCode.usage);

/** True for the error a write to a closed pipe raises (the reader went away, e.g. `| head`). */
export function isBrokenPipe(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'EPIPE' || code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'ERR_STREAM_DESTROYED';
}

/** Turns well-known system errors into user errors with a readable message. */
export function describeSystemError(err: unknown, what?: string): SbkError | undefined {
  const e = err as NodeJS.ErrnoException;
  if (!e || typeof e !== 'object' || typeof e.code !== 'string') return undefined;
  const where = what ?? e.path ?? '';
  const prefix = where ? `${where}: ` : '';
  switch (e.code) {
    case 'ENOSPC':
      return new SbkError(`${prefix}no space left on device`, ExitCode.failure, { cause: err });
    case 'EDQUOT':
      return new SbkError(`${prefix}disk quota exceeded`, ExitCode.failure, { cause: err });
    case 'ENOENT':
      return new SbkError(`${prefix}no such file or directory`, ExitCode.notFound, { cause: err });
    case 'EACCES':
    case 'EPERM':
      return new SbkError(`${prefix}permission denied`, ExitCode.failure, { cause: err });
    case 'EROFS':
      return new SbkError(`${prefix}read-only file system`, ExitCode.failure, { cause: err });
    case 'EIO':
      return new SbkError(`${prefix}I/O error`, ExitCode.failure, { cause: err });
    case 'EEXIST':
      return new SbkError(`${prefix}already exists`, ExitCode.conflict, { cause: err });
    case 'ENOTDIR':
      return new SbkError(`${prefix}not a directory`, ExitCode.failure, { cause: err });
    case 'EISDIR':
      return new SbkError(`${prefix}is a directory`, ExitCode.failure, { cause: err });
    case 'ENOTEMPTY':
      return new SbkError(`${prefix}directory not empty`, ExitCode.failure, { cause: err });
    case 'EBUSY':
      return new SbkError(`${prefix}busy (a mount point, or in use)`, ExitCode.failure, { cause: err });
    case 'EXDEV':
      return new SbkError(`${prefix}on another filesystem`, ExitCode.failure, { cause: err });
    case 'ELOOP':
      return new SbkError(`${prefix}too many levels of symbolic links`, ExitCode.failure, { cause: err });
    case 'ENAMETOOLONG':
      return new SbkError(`${prefix}file name too long`, ExitCode.failure, { cause: err });
    case 'EMFILE':
    case 'ENFILE':
      return new SbkError(`${prefix}too many open files`, ExitCode.failure, { cause: err });
    default:
      return undefined;
  }
}
