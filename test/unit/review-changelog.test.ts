// Changelog lines of a volume mounted at a non-ASCII mount point: the mount point (an ordinary
// string from the LXC config or --mount) must come out as its UTF-8 characters, not escaped as
// if each UTF-16 code unit were a byte.
import { describe, it, expect } from 'vitest';
import { formatChangelog, toLines, parseChangelogLine } from '../../src/formats/changelog-lines.js';

describe('changelog mount points', () => {
  it('a non-ASCII mount point is written as UTF-8 text, and reads back', () => {
    const rel = Buffer.from('café', 'utf8').toString('latin1'); // paths in a volume: raw bytes
    for (const mount of ['/données', '/数据', '/srv/😀']) {
      const text = formatChangelog(toLines([{ action: 'added', rel, dir: false }, { action: 'modified', rel: '', dir: true }], mount));
      expect(text).toBe(`modified ${mount}/\nadded ${mount}/café\n`);
      const back = parseChangelogLine(text.split('\n')[1]!)!;
      expect(Buffer.from(back.path, 'latin1').toString('utf8')).toBe(`${mount}/café`);
    }
  });
});
