// The sbk archive format (man/sbk.7, ARCHIVE FORMAT): one tar per backup, entries in this order
//   manifest.json                 the backup record plus the tool's version
//   meta/…                        the container's own files (config, fstab, …)
//   changelog.txt                 optional: the changes since the previous backup
//   <volume>.delta                a volume's btrfs send stream, or when larger than one part
//   <volume>.delta.000000 …       parts whose lexical order is stream order
//   trailer.json                  size and sha256 of every entry and of every whole delta
// The trailer comes last and marks the archive complete: a tar cut at an entry boundary ends
// without error, so without it a truncated archive would look whole.
// This module only gathers the format's parts: names, manifest and trailer (manifest.ts), the
// writer (writer.ts) and the reader (reader.ts).
export * from './manifest.js';
export { ArchiveWriter } from './writer.js';
export { readArchives, type ArchiveEntry, type EntryRole, type ReadOptions } from './reader.js';
export { isSafeMetaPath } from './meta.js';
