// The on-disk names and places (src/core/layout.ts): the LXC and backup dirs, container and
// volume names, and the names of backups, sets, archives and changelogs, parsed and made.
import path from 'node:path';
import { describe, it, expect } from 'vitest';
import {
  DEFAULT_LXC_DIR,
  resolveDirs,
  checkContainerName,
  isValidContainerName,
  isValidVolumeName,
  backupName,
  setDirName,
  archiveFileName,
  changelogFileName, legacyChangelogFileName,
  parseArchiveName,
  ARCHIVE_SUFFIXES,
  archiveFileNames,
  parseSetDirName,
  partialSetName,
  formatTime,
} from '../../src/core/layout.js';
import { ExitCode } from '../../src/core/errors.js';
import { sbkErrorOf } from '../helpers/errors.js';

describe('resolveDirs', () => {
  it('defaults to the Subutai LXC dir and <lxc-dir>/backups', () => {
    expect(resolveDirs({}, {})).toEqual({ lxcDir: DEFAULT_LXC_DIR, backupDir: `${DEFAULT_LXC_DIR}/backups` });
    expect(DEFAULT_LXC_DIR).toBe('/var/snap/subutai/common/lxc');
  });

  it('takes SBK_LXC_DIR and SBK_BACKUP_DIR from the environment', () => {
    expect(resolveDirs({}, { SBK_LXC_DIR: '/srv/lxc' })).toEqual({ lxcDir: '/srv/lxc', backupDir: '/srv/lxc/backups' });
    expect(resolveDirs({}, { SBK_LXC_DIR: '/srv/lxc', SBK_BACKUP_DIR: '/mnt/bk' })).toEqual({
      lxcDir: '/srv/lxc',
      backupDir: '/mnt/bk',
    });
    expect(resolveDirs({}, { SBK_BACKUP_DIR: '/mnt/bk' })).toEqual({ lxcDir: DEFAULT_LXC_DIR, backupDir: '/mnt/bk' });
  });

  it('prefers options over the environment', () => {
    const env = { SBK_LXC_DIR: '/env/lxc', SBK_BACKUP_DIR: '/env/bk' };
    expect(resolveDirs({ lxcDir: '/opt/lxc' }, env)).toEqual({ lxcDir: '/opt/lxc', backupDir: '/env/bk' });
    expect(resolveDirs({ lxcDir: '/opt/lxc', backupDir: '/opt/bk' }, env)).toEqual({ lxcDir: '/opt/lxc', backupDir: '/opt/bk' });
    // The default backup dir follows the lxc dir that was chosen, not the environment's.
    expect(resolveDirs({ lxcDir: '/opt/lxc' }, { SBK_LXC_DIR: '/env/lxc' }).backupDir).toBe('/opt/lxc/backups');
  });

  it('treats empty values as unset', () => {
    expect(resolveDirs({ lxcDir: '', backupDir: '' }, { SBK_LXC_DIR: '', SBK_BACKUP_DIR: '' })).toEqual({
      lxcDir: DEFAULT_LXC_DIR,
      backupDir: `${DEFAULT_LXC_DIR}/backups`,
    });
  });

  it('makes relative paths absolute and normalizes them', () => {
    const d = resolveDirs({ lxcDir: 'rel/lxc/', backupDir: './bk/../bk2' }, {});
    expect(d.lxcDir).toBe(path.resolve('rel/lxc'));
    expect(d.backupDir).toBe(path.resolve('bk2'));
    expect(resolveDirs({}, { SBK_LXC_DIR: '/srv//lxc/' })).toEqual({ lxcDir: '/srv/lxc', backupDir: '/srv/lxc/backups' });
  });

  it('reads process.env by default', () => {
    const d = resolveDirs({ lxcDir: '/x/lxc', backupDir: '/x/bk' });
    expect(d).toEqual({ lxcDir: '/x/lxc', backupDir: '/x/bk' });
  });
});

describe('checkContainerName', () => {
  it.each(['c1', 'web_2', 'Web-2', 'a', 'x.y', 'a+b', '9lives', 'c'.repeat(100), 'Container_With.Many-Parts+1'])(
    'accepts %s',
    (name) => {
      expect(checkContainerName(name)).toBe(name);
      expect(isValidContainerName(name)).toBe(true);
    },
  );

  const bad: [string, string, RegExp][] = [
    ['empty', '', /is empty/],
    ['a slash', 'a/b', /contains '\/'/],
    ['a leading slash', '/etc', /contains '\/'/],
    ['a path', '../c1', /contains '\/'/],
    ['..', '..', /contains '\.\.'/],
    ['.', '.', /not valid/],
    ['.. inside', 'a..b', /contains '\.\.'/],
    ['a space', 'my container', /white space/],
    ['a tab', 'c\t1', /white space/],
    ['a newline', 'c1\n', /white space/],
    ['backups', 'backups', /'backups' is the backup directory/],
    ['a leading dot', '.hidden', /not valid/],
    ['a leading dash', '-rf', /not valid/],
    ['a leading underscore', '_c1', /not valid/],
    ['unicode', 'cöntainer', /not valid/],
    ['an emoji', 'c🙂', /not valid/],
    ['101 characters', 'c'.repeat(101), /at most 100/],
    ['a NUL', 'c\0', /not valid/],
    ['a colon', 'c:1', /not valid/],
    ['a star', 'c*', /not valid/],
  ];
  it.each(bad)('refuses a name with %s, with a usage error naming the problem', (_what, name, message) => {
    const err = sbkErrorOf(() => checkContainerName(name));
    expect(err.exitCode).toBe(ExitCode.usage);
    expect(err.message).toMatch(message);
    expect(err.message).not.toContain('\n');
    expect(isValidContainerName(name)).toBe(false);
  });

  it('uses the caller’s word for the thing named', () => {
    expect(sbkErrorOf(() => checkContainerName('a b', 'new container name')).message).toMatch(/^new container name 'a b'/);
  });

  it('shows control characters escaped, keeping the message on one line', () => {
    expect(sbkErrorOf(() => checkContainerName('c1\n')).message).toBe("container name 'c1\\x0a' contains white space");
    expect(sbkErrorOf(() => checkContainerName('c\x1b[31m')).message).toMatch(/^container name 'c\\x1b\[31m' is not valid/);
  });

  it('refuses non-strings', () => {
    expect(sbkErrorOf(() => checkContainerName(undefined as unknown as string)).exitCode).toBe(ExitCode.usage);
    expect(isValidContainerName(42 as unknown as string)).toBe(false);
  });
});

describe('isValidVolumeName', () => {
  it.each(['rootfs', 'home', 'opt', 'var', 'var.log', '_data', 'v+1', 'x'.repeat(100)])('accepts %s', (n) => {
    expect(isValidVolumeName(n)).toBe(true);
  });
  it.each(['', 'meta', '..', '.', '../x', 'a/b', '.hidden', 'a..b', 'a b', 'x'.repeat(101), 'ünï', '-x'])('refuses %j', (n) => {
    expect(isValidVolumeName(n)).toBe(false);
  });
});

describe('names of backups, sets, archives and changelogs', () => {
  it('backupName', () => {
    expect(backupName('c1', 1477297700, false)).toBe('c1_1477297700');
    expect(backupName('c1', 1477297700, true)).toBe('c1_1477297700_Full');
    expect(backupName('web_2', 5, true)).toBe('web_2_5_Full');
  });

  it('archiveFileName and changelogFileName', () => {
    expect(archiveFileName('c1', 1477297700, false)).toBe('c1_1477297700.tar.gz');
    expect(archiveFileName('c1', 1477297700, true)).toBe('c1_1477297700_Full.tar.gz');
    // The archive's base name with _changelog.txt, as the original layout names it.
    expect(changelogFileName('c1', 1477297700, false)).toBe('c1_1477297700_changelog.txt');
    expect(changelogFileName('c1', 1477297700, true)).toBe('c1_1477297700_Full_changelog.txt');
    expect(changelogFileName('web_2', 5, true)).toBe('web_2_5_Full_changelog.txt');
    // The name sbk gave a Full's sidecar before, still pruned with it.
    expect(legacyChangelogFileName('c1', 1477297700)).toBe('c1_1477297700_changelog.txt');
  });

  it('setDirName and partialSetName', () => {
    expect(setDirName(1477297700, false)).toBe('1477297700');
    expect(setDirName(1477297700, true)).toBe('1477297700_Full');
    expect(partialSetName(12, false, 7)).toBe('.12.partial-7');
    expect(partialSetName(12, true, 7)).toBe('.12_Full.partial-7');
    // A partial set is never mistaken for a set.
    expect(parseSetDirName(partialSetName(12, true))).toBeUndefined();
  });

  it('formatTime', () => {
    expect(formatTime(1477297700)).toBe('2016-10-24T08:28:20Z');
    expect(formatTime(0)).toBe('1970-01-01T00:00:00Z');
  });
});

describe('parseArchiveName', () => {
  it('parses incrementals and Fulls', () => {
    expect(parseArchiveName('c1_1477297700.tar.gz')).toEqual({ container: 'c1', time: 1477297700, full: false, suffix: '.tar.gz' });
    expect(parseArchiveName('c1_1477297700_Full.tar.gz')).toEqual({ container: 'c1', time: 1477297700, full: true, suffix: '.tar.gz' });
  });

  it('takes the time from the right: container names may hold _ and digits', () => {
    expect(parseArchiveName('web_2_1477297700.tar.gz')).toEqual({ container: 'web_2', time: 1477297700, full: false, suffix: '.tar.gz' });
    expect(parseArchiveName('web_2_1477297700_Full.tar.gz')).toEqual({ container: 'web_2', time: 1477297700, full: true, suffix: '.tar.gz' });
    expect(parseArchiveName('a_1_2_3.tar.gz')).toEqual({ container: 'a_1_2', time: 3, full: false, suffix: '.tar.gz' });
    expect(parseArchiveName('x_Full_12.tar.gz')).toEqual({ container: 'x_Full', time: 12, full: false, suffix: '.tar.gz' });
    expect(parseArchiveName('x_Full_12_Full.tar.gz')).toEqual({ container: 'x_Full', time: 12, full: true, suffix: '.tar.gz' });
  });

  it('uses only the base name of a path', () => {
    expect(parseArchiveName('/var/snap/subutai/common/lxc/backups/c1_12_Full.tar.gz')).toEqual({
      container: 'c1',
      time: 12,
      full: true,
      suffix: '.tar.gz',
    });
  });

  it('round-trips archiveFileName', () => {
    for (const container of ['c1', 'web_2', 'a_1_Full', 'x.y+z', 'c'.repeat(100)])
      for (const time of [0, 1, 1477297700, 999999999999])
        for (const full of [false, true])
          for (const suffix of ARCHIVE_SUFFIXES)
            expect(parseArchiveName(archiveFileName(container, time, full, suffix))).toEqual({ container, time, full, suffix });
  });

  it('parses zstd archives (.tar.zst) as gzip ones, and no other suffix', () => {
    expect(parseArchiveName('c1_1477297700_Full.tar.zst')).toEqual({ container: 'c1', time: 1477297700, full: true, suffix: '.tar.zst' });
    for (const n of ['c1_1477297700.tar.zstd', 'c1_1477297700.zst', 'c1_1477297700.tar.zst.gpg', 'c1_1477297700.tar.xz'])
      expect(parseArchiveName(n), n).toBeUndefined();
    expect(archiveFileNames('c1', 5, false)).toEqual(['c1_5.tar.gz', 'c1_5.tar.zst']);
  });

  it.each([
    'c1_1477297700.tar',
    'c1_1477297700.tgz',
    'c1_1477297700.tar.gz.tmp-12-0',
    '.c1_1477297700.tar.gz.tmp-12-0',
    'c1_1477297700_changelog.txt',
    'c1_1477297700_Full_changelog.txt',
    'c1_1477297700_full.tar.gz',
    'c1_1477297700_Full_Full.tar.gz',
    'c1__Full.tar.gz',
    'c1_.tar.gz',
    '_1477297700.tar.gz',
    'c1-1477297700.tar.gz',
    'c1_1477297700x.tar.gz',
    'c1_-5.tar.gz',
    'c1_1e9.tar.gz',
    'c1_1477297700000.tar.gz', // 13 digits: not a unix time in seconds
    '1477297700_Full',
    '',
  ])('returns undefined for %j', (name) => {
    expect(parseArchiveName(name)).toBeUndefined();
  });

  it('refuses names whose container part is not a valid container name', () => {
    // A hidden file, white space, unicode: not archives sbk made (nor a container it could restore).
    expect(parseArchiveName('.c1_1477297700.tar.gz')).toBeUndefined();
    expect(parseArchiveName('my c1_1477297700.tar.gz')).toBeUndefined();
    expect(parseArchiveName('cöntainer_1477297700.tar.gz')).toBeUndefined();
    expect(parseArchiveName('backups_1477297700.tar.gz')).toBeUndefined();
  });

  it('refuses times with leading zeros (they would not round-trip to the same file name)', () => {
    expect(parseArchiveName('c1_01477297700.tar.gz')).toBeUndefined();
    expect(parseArchiveName('c1_00.tar.gz')).toBeUndefined();
    expect(parseArchiveName('c1_0.tar.gz')).toEqual({ container: 'c1', time: 0, full: false, suffix: '.tar.gz' });
  });
});

describe('parseSetDirName', () => {
  it('parses set directories', () => {
    expect(parseSetDirName('1477297700')).toEqual({ time: 1477297700, full: false });
    expect(parseSetDirName('1477297700_Full')).toEqual({ time: 1477297700, full: true });
    expect(parseSetDirName('0')).toEqual({ time: 0, full: false });
  });

  it('round-trips setDirName', () => {
    for (const time of [0, 7, 1477297700, 999999999999])
      for (const full of [false, true]) expect(parseSetDirName(setDirName(time, full))).toEqual({ time, full });
  });

  it.each([
    '',
    'rootfs',
    '.1477297700.partial',
    '.1477297700_Full.partial',
    '1477297700_full',
    '1477297700_Full_Full',
    '_Full',
    '1477297700 ',
    '-1',
    '1477297700000',
    '01477297700',
    '.sbk-confirmed',
    'c1_1477297700',
  ])('returns undefined for %j', (name) => {
    expect(parseSetDirName(name)).toBeUndefined();
  });
});
