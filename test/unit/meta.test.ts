// The meta rule (src/formats/archive/meta.ts): which files beside the volumes the config names as logs, and
// what a reader refuses, the same limits sbk-send keeps to.
import { describe, it, expect } from 'vitest';
import { configLogFiles, metaEntryRefusal, metaEntryCost, META_FILE_MAX, META_TOTAL_MAX, LEGACY_META_FILE_MAX } from '../../src/formats/archive/meta.js';

describe('configLogFiles', () => {
  it('takes the LXC 2 and LXC 3+ log keys, inside the container directory only', () => {
    const cfg = [
      'lxc.logfile = /l/c1/c1.log',
      'lxc.log.file = /l/c1/logs/lxc.log',
      'lxc.console.logfile = console.log',
      'lxc.console.logfile = /var/log/lxc/c1-console.log',
      '# lxc.logfile = /l/c1/commented.log',
    ].join('\n');
    const m = configLogFiles(cfg, '/l/c1');
    expect([...m.keys()].sort()).toEqual(['c1.log', 'c1.log.1', 'console.log', 'console.log.1', 'logs/lxc.log', 'logs/lxc.log.1']);
    expect(m.get('c1.log')).toBe('lxc.logfile');
    expect(m.get('logs/lxc.log')).toBe('lxc.log.file');
    expect(m.get('console.log')).toBe('lxc.console.logfile');
  });

  it('never names the container directory itself or anything outside it', () => {
    expect(configLogFiles('lxc.logfile = /l/c1\nlxc.log.file = /l/c1/../c2/x.log\nlxc.logfile =\n', '/l/c1').size).toBe(0);
  });
});

describe('metaEntryRefusal', () => {
  it('accepts a file at the cap, refuses one byte more, and counts headers and padding in the total', () => {
    expect(metaEntryRefusal(META_FILE_MAX, 0, false)).toBeUndefined();
    expect(metaEntryRefusal(META_FILE_MAX + 1, 0, false)).toMatch(/too large/);
    expect(metaEntryCost(1)).toBe(1024);
    expect(metaEntryCost(0)).toBe(512);
    expect(metaEntryRefusal(0, META_TOTAL_MAX - 512, false)).toBeUndefined();
    expect(metaEntryRefusal(1, META_TOTAL_MAX - 512, false)).toMatch(/past/);
  });

  it('allows archives of the original tool their bigger files', () => {
    expect(metaEntryRefusal(META_FILE_MAX * 10, 1e12, true)).toBeUndefined();
    expect(metaEntryRefusal(LEGACY_META_FILE_MAX + 1, 0, true)).toMatch(/larger than/);
  });
});
