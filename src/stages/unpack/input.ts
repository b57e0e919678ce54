// What sbk-unpack reads: its inputs (archive files or a stream), what each archive is (from its
// manifest, or from the file name of an original Subutai archive), and the check of their order
// (links.ts's followProblem) from the archives' first entries before anything is received.
import type { Readable } from 'node:stream';
import { readArchiveHeadFrom } from '../../formats/archive/open.js';
import { chainId, followProblem, type ChainId } from '../../formats/archive/links.js';
import { SbkError, ExitCode } from '../../core/errors.js';
import type { ParsedArchiveName } from '../../core/layout.js';
import type { ProgressHooks } from '../../core/progress.js';
import type { ArchiveEntry } from '../../formats/archive/archive.js';

export interface RestoreInput {
  /** A path, or 'stdin': for messages. */
  source: string;
  /** Opens the uncompressed tar stream of one or more archives. Called once, in input order. */
  open(): Promise<Readable>;
  /** From the file name: the only name and kind an original Subutai archive has. */
  nameInfo?: ParsedArchiveName;
  /** Size of the archive file, when known (for progress). */
  size?: number;
  /** The stored bytes from the start, read only as far as needed (an archive file or object): for the order check. */
  head?(): Promise<Readable>;
}

/** A volume's send stream as it starts being received or checked: the archive, the volume, and the tar stream it is read from. */
export interface VolumeRead {
  archive: string;
  volume: string;
  input: RestoreInput;
  tarStream: Readable;
}

/** Progress of the volumes' send streams as they are received or checked. */
export type RestoreProgress = ProgressHooks<VolumeRead>;

/** An original Subutai archive: only its file name (or --as) says what it is. */
export function legacyId(input: RestoreInput, as: string | undefined): ChainId {
  const n = input.nameInfo;
  if (!n) {
    if (!as)
      throw new SbkError(
        `${input.source}: an archive of the original Subutai tool carries no container name; give one with --as NAME`,
        ExitCode.usage,
      );
    return { legacy: true, container: as, name: input.source, full: true, time: 0 };
  }
  const name = `${n.container}_${n.time}${n.full ? '_Full' : ''}`;
  return { legacy: true, container: n.container, name, full: n.full, time: n.time };
}

/** Throws unless `id` may come after `prev` (undefined: it is the first) in one restore. */
export function checkFollows(prev: ChainId | undefined, id: ChainId): void {
  const problem = followProblem(prev, id);
  if (problem) throw new SbkError(problem, ExitCode.badInput);
}

/**
 * Checks the order of archive files from their first entries before any is received, so a
 * wrong list fails in a second instead of after receiving a large Full.
 */
export async function precheckFiles(inputs: RestoreInput[], as: string | undefined): Promise<void> {
  let prev: ChainId | undefined;
  for (const input of inputs) {
    if (!input.head) throw new SbkError(`internal: ${input.source} has no head to check`, ExitCode.bug);
    const head = await readArchiveHeadFrom(await input.head(), input.source);
    const id = head.manifest ? chainId(head.manifest) : legacyId(input, as);
    checkFollows(prev, id);
    prev = id;
  }
}

/** What a restore (by receive or by replay) does with the entries of an archive. */
export interface EntryHandlers {
  /** The archive being read, once begun. */
  current(): { id: ChainId } | undefined;
  begin(id: ChainId): Promise<void>;
  meta(e: ArchiveEntry, archive: string): Promise<void>;
  delta(e: ArchiveEntry): Promise<void>;
  /** The trailer: readArchives yields it only once every entry and delta matched it. */
  end(): Promise<void> | void;
}

/**
 * One entry of a restore's input to its handler. An archive begins at its manifest, or, for an
 * original Subutai archive (none), at its first entry, named by its file (or --as).
 */
export async function routeEntry(e: ArchiveEntry, input: RestoreInput, as: string | undefined, h: EntryHandlers): Promise<void> {
  if (!h.current()) {
    if (e.role === 'manifest') return h.begin(chainId(e.manifest));
    await h.begin(legacyId(input, as));
  }
  const cur = h.current()!;
  switch (e.role) {
    case 'manifest':
      throw new SbkError(`${input.source}: a second manifest inside ${cur.id.name}`, ExitCode.corrupt);
    case 'meta':
      return h.meta(e, cur.id.name);
    case 'changelog':
      return; // not needed to restore; the reader still checks its sha256
    case 'delta':
      return h.delta(e);
    case 'trailer':
      return h.end();
  }
}

