// The LXC config (src/formats/lxc-config.ts): parsing and byte-exact serializing, values, fstab
// fields, the rootfs, the volumes of a container in LXC 2 and LXC 3 syntax (what is skipped and
// why, a config written for another lxc dir), reading a container's config, quoted values, and
// real configs (test/fixtures/lxc-configs: LXC 5's busybox template, a Subutai LXC 2 config)
// with what a restore under a new name changes in them.
import { mkdtemp, mkdir, writeFile, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it, expect } from 'vitest';
import {
  parseLxcConfig,
  serializeLxcConfig,
  configValues,
  configValue,
  splitFstabFields,
  rootfsPath,
  configVolumes,
  readContainerConfig,
  rewriteConfigForRestore,
  type ConfigVolumes,
} from '../../src/formats/lxc-config.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';
import { startFailureReason } from '../../src/system/lxc-control.js';
import { sampleConfig, ROOT } from '../helpers/sandbox.js';
import { sbkErrorOf as errorOf } from '../helpers/errors.js';

const LXC = '/var/snap/subutai/common/lxc';
const C1 = `${LXC}/c1`;

/** A Subutai container config as the LXC 2 based agent wrote it (with the usual noise around the keys sbk reads). */
const SUBUTAI_LXC2 = `# Template used to create this container: /usr/share/lxc/templates/lxc-subutai
# Parameters passed to the template:
# For additional config options, please look at lxc.container.conf(5)

# Uncomment the following line to support nesting containers:
#lxc.include = /usr/share/lxc/config/nesting.conf
# (Be aware this has security implications)

lxc.include = /usr/share/lxc/config/ubuntu.common.conf
lxc.arch = amd64
lxc.rootfs = ${C1}/rootfs
lxc.rootfs.mount = ${C1}/rootfs
lxc.rootfs.backend = btrfs
lxc.utsname = c1
lxc.mount = ${C1}/fstab
lxc.mount.entry = ${C1}/home home none bind,rw 0 0
lxc.mount.entry = ${C1}/opt opt none bind,rw 0 0
lxc.mount.entry = ${C1}/var var none bind,rw 0 0
lxc.mount.entry = proc proc proc nodev,noexec,nosuid 0 0
lxc.mount.entry = sysfs sys sysfs defaults 0 0
lxc.mount.entry = /dev/fuse dev/fuse none bind,create=file,optional 0 0
lxc.network.type = veth
lxc.network.flags = up
lxc.network.link = lxcbr0
lxc.network.hwaddr = 00:16:3e:5a:2b:01
lxc.network.veth.pair = 00163e5a2b01
lxc.network.script.up = /snap/subutai/current/bin/create_ovs_interface
lxc.network.ipv4 = 10.10.10.2/24
lxc.network.ipv4.gateway = 10.10.10.254
lxc.cgroup.memory.limit_in_bytes = 1073741824
lxc.start.auto = 1
subutai.config.path = ${LXC}
subutai.parent = ubuntu16
subutai.parent.owner = subutai
subutai.parent.version = 0.4.1
subutai.template = ubuntu16
subutai.git.branch = ubuntu16
`;

/** The same container after the move to LXC 3 key names. */
const SUBUTAI_LXC3 = `lxc.include = /usr/share/lxc/config/ubuntu.common.conf
lxc.arch = amd64
lxc.rootfs.path = btrfs:${C1}/rootfs
lxc.uts.name = c1
lxc.mount.fstab = ${C1}/fstab
lxc.mount.entry = ${C1}/home home none bind,rw 0 0
lxc.mount.entry = ${C1}/opt opt none bind,rw 0 0
lxc.mount.entry = ${C1}/var var none bind,rw 0 0
lxc.net.0.type = veth
lxc.net.0.flags = up
lxc.net.0.link = lxcbr0
lxc.net.0.hwaddr = 00:16:3e:5a:2b:01
lxc.net.0.veth.pair = 00163e5a2b01
lxc.net.0.ipv4.address = 10.10.10.2/24
lxc.start.auto = 1
subutai.config.path = ${LXC}
subutai.template = ubuntu16
`;

const FOUR = [
  { name: 'rootfs', source: `${C1}/rootfs`, mount: '/' },
  { name: 'home', source: `${C1}/home`, mount: '/home' },
  { name: 'opt', source: `${C1}/opt`, mount: '/opt' },
  { name: 'var', source: `${C1}/var`, mount: '/var' },
];

function volumesOf(text: string, containerDir = C1): ConfigVolumes {
  return configVolumes(parseLxcConfig(text), containerDir);
}

/** A minimal LXC 2 config with the given extra lines. */
const lxc2 = (...extra: string[]) => [`lxc.rootfs = ${C1}/rootfs`, `lxc.utsname = c1`, ...extra, ''].join('\n');

describe('parseLxcConfig / serializeLxcConfig', () => {
  it.each([
    ['the Subutai LXC 2 config', SUBUTAI_LXC2],
    ['the Subutai LXC 3 config', SUBUTAI_LXC3],
    ['the sandbox config', sampleConfig('/tmp/x/lxc/c1', 'c1', ['rootfs', 'home', 'opt', 'var'])],
    ['no final newline', 'lxc.arch = amd64\nlxc.utsname = c1'],
    ['blank lines at the end', 'lxc.arch = amd64\n\n\n'],
    ['CRLF line ends', 'lxc.arch = amd64\r\nlxc.utsname = c1\r\n'],
    ['odd spacing and tabs', '  lxc.arch=amd64\n\tlxc.utsname\t=\tc1  \n# comment = not a key\n'],
    ['a line without =', 'garbage line\nlxc.arch = amd64\n'],
    ['empty text', ''],
    ['only a newline', '\n'],
    ['unicode', '# ünïcødé comment\nsubutai.note = héllo wörld\n'],
  ])('round-trips %s byte for byte', (_what, text) => {
    expect(serializeLxcConfig(parseLxcConfig(text))).toBe(text);
  });

  it('splits keys and values at the first =, trimmed', () => {
    const cfg = parseLxcConfig('  lxc.arch=amd64\nlxc.hook.pre-start = /bin/sh -c "a=b"\r\n\tlxc.utsname\t=\tc1  \n');
    expect(cfg.lines.map((l) => [l.key, l.value])).toEqual([
      ['lxc.arch', 'amd64'],
      ['lxc.hook.pre-start', '/bin/sh -c "a=b"'],
      ['lxc.utsname', 'c1'],
      [undefined, undefined],
    ]);
  });

  it('keeps comments, blank lines and lines without = as raw lines with no key', () => {
    const cfg = parseLxcConfig('# lxc.rootfs = /nope\n\n   \nnot a setting\n#lxc.include = x\n');
    expect(cfg.lines.every((l) => l.key === undefined)).toBe(true);
    expect(configValue(cfg, 'lxc.rootfs', '# lxc.rootfs')).toBeUndefined();
    expect(cfg.lines.map((l) => l.raw)).toEqual(['# lxc.rootfs = /nope', '', '   ', 'not a setting', '#lxc.include = x', '']);
  });

  it('keeps an empty value', () => {
    expect(configValues(parseLxcConfig('lxc.cap.drop =\n'), 'lxc.cap.drop')).toEqual(['']);
  });

  it('changing one line changes only that line', () => {
    const cfg = parseLxcConfig(SUBUTAI_LXC2);
    const line = cfg.lines.find((l) => l.key === 'lxc.utsname')!;
    line.raw = 'lxc.utsname = c2';
    expect(serializeLxcConfig(cfg)).toBe(SUBUTAI_LXC2.replace('lxc.utsname = c1', 'lxc.utsname = c2'));
  });
});

describe('configValues / configValue', () => {
  const cfg = parseLxcConfig(SUBUTAI_LXC2);

  it('lists every value of a repeated key, in order', () => {
    expect(configValues(cfg, 'lxc.mount.entry')).toEqual([
      `${C1}/home home none bind,rw 0 0`,
      `${C1}/opt opt none bind,rw 0 0`,
      `${C1}/var var none bind,rw 0 0`,
      'proc proc proc nodev,noexec,nosuid 0 0',
      'sysfs sys sysfs defaults 0 0',
      '/dev/fuse dev/fuse none bind,create=file,optional 0 0',
    ]);
    expect(configValues(cfg, 'lxc.nothing')).toEqual([]);
  });

  it('matches keys exactly (lxc.rootfs is not lxc.rootfs.mount or lxc.rootfs.backend)', () => {
    expect(configValues(cfg, 'lxc.rootfs')).toEqual([`${C1}/rootfs`]);
    expect(configValue(cfg, 'lxc.rootfs.backend')).toBe('btrfs');
  });

  it('the last value wins; the first key that is present wins', () => {
    const c = parseLxcConfig('a = 1\nb = 2\na = 3\n');
    expect(configValue(c, 'a')).toBe('3');
    expect(configValue(c, 'b', 'a')).toBe('2');
    expect(configValue(c, 'x', 'a')).toBe('3');
    expect(configValue(c, 'x', 'y')).toBeUndefined();
    expect(configValue(parseLxcConfig(SUBUTAI_LXC3), 'lxc.uts.name', 'lxc.utsname')).toBe('c1');
    expect(configValue(cfg, 'lxc.uts.name', 'lxc.utsname')).toBe('c1');
  });
});

describe('splitFstabFields', () => {
  it('splits on spaces and tabs', () => {
    expect(splitFstabFields('/a  b\tnone\t bind,rw 0 0')).toEqual(['/a', 'b', 'none', 'bind,rw', '0', '0']);
    expect(splitFstabFields('  ')).toEqual([]);
  });

  it('decodes octal escapes (\\040 space, \\011 tab, \\134 backslash, \\012 newline)', () => {
    expect(splitFstabFields('/x/c1/my\\040vol my\\040vol none bind 0 0')).toEqual(['/x/c1/my vol', 'my vol', 'none', 'bind', '0', '0']);
    expect(splitFstabFields('a\\011b c\\134d e\\012f')).toEqual(['a\tb', 'c\\d', 'e\nf']);
    // Not an escape: fewer than three octal digits, or digits 8/9.
    expect(splitFstabFields('a\\04 b\\089')).toEqual(['a\\04', 'b\\089']);
  });
});

describe('rootfsPath', () => {
  it.each([
    ['/var/lib/lxc/c1/rootfs', '/var/lib/lxc/c1/rootfs'],
    ['btrfs:/var/lib/lxc/c1/rootfs', '/var/lib/lxc/c1/rootfs'],
    ['dir:/var/lib/lxc/c1/rootfs', '/var/lib/lxc/c1/rootfs'],
    ['/path/with:colon', '/path/with:colon'],
  ])('%s → %s', (value, want) => {
    expect(rootfsPath(value)).toBe(want);
  });

  it.each(['overlay:/a:/b', 'overlayfs:/lower:/upper', 'lvm:/dev/vg/c1', 'zfs:tank/c1', 'loop:/img', 'rbd:pool/c1', 'nbd:file:1'])(
    'refuses the %s backend as bad input',
    (value) => {
      const err = errorOf(() => rootfsPath(value));
      expect(err.exitCode).toBe(ExitCode.badInput);
      expect(err.message).toMatch(/backend '[a-z]+' is not supported/);
    },
  );
});

describe('configVolumes: LXC 2 syntax', () => {
  it('reads the four Subutai volumes with their mount points', () => {
    const v = volumesOf(SUBUTAI_LXC2);
    expect(v.volumes).toEqual(FOUR);
  });

  it('skips proc, sysfs and binds from outside the container, saying why', () => {
    const v = volumesOf(SUBUTAI_LXC2);
    expect(v.skipped).toEqual([
      { source: 'proc', reason: 'not a path (type proc)' },
      { source: 'sysfs', reason: 'not a path (type sysfs)' },
      { source: '/dev/fuse', reason: 'a host path outside the container directory: not in the backup' },
    ]);
  });

  it('reads the sandbox config of the e2e tests', () => {
    const cdir = '/tmp/sbk-test-x/mnt/lxc/c1';
    const v = configVolumes(parseLxcConfig(sampleConfig(cdir, 'c1', ['rootfs', 'home', 'opt', 'var'])), cdir);
    expect(v.volumes).toEqual(FOUR.map((x) => ({ ...x, source: `${cdir}/${x.name}` })));
    expect(v.skipped).toEqual([{ source: 'proc', reason: 'not a path (type proc)' }]);
  });

  it('a container with the rootfs only', () => {
    expect(volumesOf(lxc2()).volumes).toEqual([FOUR[0]]);
  });

  it('accepts a btrfs: or dir: prefix on lxc.rootfs as well', () => {
    expect(volumesOf(`lxc.rootfs = btrfs:${C1}/rootfs\n`).volumes).toEqual([FOUR[0]]);
    expect(volumesOf(`lxc.rootfs = dir:${C1}/rootfs\n`).volumes).toEqual([FOUR[0]]);
  });

  it('takes the mount point from the second field of a mount entry', () => {
    const v = volumesOf(
      lxc2(
        `lxc.mount.entry = ${C1}/home home none bind,rw 0 0`,
        `lxc.mount.entry = ${C1}/data srv/data none bind 0 0`,
        `lxc.mount.entry = ${C1}/www ./var/www/ none bind 0 0`,
        `lxc.mount.entry = ${C1}/logs var//log/ none bind,create=dir 0 0`,
      ),
    );
    expect(v.volumes.map((x) => [x.name, x.mount])).toEqual([
      ['rootfs', '/'],
      ['home', '/home'],
      ['data', '/srv/data'],
      ['www', '/var/www'],
      ['logs', '/var/log'],
    ]);
  });

  it('takes an absolute destination under lxc.rootfs.mount as a path inside the container', () => {
    const v = volumesOf(
      lxc2(
        `lxc.rootfs.mount = /usr/lib/x86_64-linux-gnu/lxc`,
        `lxc.mount.entry = ${C1}/opt /usr/lib/x86_64-linux-gnu/lxc/opt none bind 0 0`,
        `lxc.mount.entry = ${C1}/home /usr/lib/x86_64-linux-gnu/lxc/home/ none bind 0 0`,
      ),
    );
    expect(v.volumes.map((x) => [x.name, x.mount])).toEqual([
      ['rootfs', '/'],
      ['opt', '/opt'],
      ['home', '/home'],
    ]);
  });

  it('takes an absolute destination under the rootfs path as a path inside the container', () => {
    const v = volumesOf(
      lxc2(`lxc.rootfs.mount = ${C1}/rootfs`, `lxc.mount.entry = ${C1}/opt ${C1}/rootfs/opt none bind 0 0`, `lxc.mount.entry = ${C1}/var ${C1}/rootfs none bind 0 0`),
    );
    expect(v.volumes.map((x) => [x.name, x.mount])).toEqual([
      ['rootfs', '/'],
      ['opt', '/opt'],
      ['var', '/'],
    ]);
    // A prefix must end at a path component: rootfs2 is not under rootfs.
    const w = volumesOf(lxc2(`lxc.mount.entry = ${C1}/opt ${C1}/rootfs2/opt none bind 0 0`));
    expect(w.volumes[1]!.mount).toBe(`${C1}/rootfs2/opt`);
  });

  it('decodes \\040 escapes in sources and mount points', () => {
    const v = volumesOf(lxc2(`lxc.mount.entry = ${C1}/my\\040data srv/my\\040data none bind 0 0`));
    expect(v.volumes[1]).toEqual({ name: 'my data', source: `${C1}/my data`, mount: '/srv/my data' });
  });

  it('skips every kind of non-volume mount entry', () => {
    const v = volumesOf(
      lxc2(
        'lxc.mount.entry = proc proc proc nodev,noexec,nosuid 0 0',
        'lxc.mount.entry = sysfs sys sysfs ro 0 0',
        'lxc.mount.entry = tmpfs tmp tmpfs defaults 0 0',
        'lxc.mount.entry = cgroup sys/fs/cgroup cgroup defaults 0 0',
        'lxc.mount.entry = /dev/net/tun dev/net/tun none bind,create=file 0 0',
        'lxc.mount.entry = /srv/shared srv/shared none bind,create=dir 0 0',
        `lxc.mount.entry = ${LXC}/c2/home c2home none bind 0 0`,
        `lxc.mount.entry = ${C1}/rootfs/srv srv none bind 0 0`,
        `lxc.mount.entry = ${C1}/resolv.conf etc/resolv.conf none bind,ro,create=file 0 0`,
        `lxc.mount.entry = ${C1}/data/www var/www none bind 0 0`,
        `lxc.mount.entry = ${C1} srv/c1 none bind 0 0`,
        'lxc.mount.entry = /lonely',
        'lxc.mount.entry =',
      ),
    );
    expect(v.volumes).toEqual([FOUR[0]]);
    expect(v.skipped).toEqual([
      { source: 'proc', reason: 'not a path (type proc)' },
      { source: 'sysfs', reason: 'not a path (type sysfs)' },
      { source: 'tmpfs', reason: 'not a path (type tmpfs)' },
      { source: 'cgroup', reason: 'not a path (type cgroup)' },
      { source: '/dev/net/tun', reason: 'a host path outside the container directory: not in the backup' },
      { source: '/srv/shared', reason: 'a host path outside the container directory: not in the backup' },
      { source: `${LXC}/c2/home`, reason: 'a host path outside the container directory: not in the backup' },
      { source: `${C1}/rootfs/srv`, reason: 'inside volume rootfs: backed up with it' },
      { source: `${C1}/resolv.conf`, reason: 'a file bind mount: not a volume' },
      { source: `${C1}/data/www`, reason: 'inside the container directory but not a subvolume directly in it: not a volume (at most its small files are kept as meta files)' },
      { source: C1, reason: 'the container directory itself: not a volume (its subvolumes are)' },
      { source: '/lonely', reason: 'malformed mount entry' },
      { source: '', reason: 'malformed mount entry' },
    ]);
  });

  it('does not take a host directory that merely has the container’s name for the container', () => {
    // Container "www" binds /srv/www/uploads from the host: not a volume of the container.
    const www = `${LXC}/www`;
    const v = configVolumes(
      parseLxcConfig(`lxc.rootfs = ${www}/rootfs\nlxc.mount.entry = /srv/www/uploads var/www/uploads none bind 0 0\n`),
      www,
    );
    expect(v.volumes).toEqual([{ name: 'rootfs', source: `${www}/rootfs`, mount: '/' }]);
    expect(v.skipped).toEqual([{ source: '/srv/www/uploads', reason: 'a host path outside the container directory: not in the backup' }]);
  });

  it('refuses a volume named twice', () => {
    const err = errorOf(() => volumesOf(lxc2(`lxc.mount.entry = ${C1}/home home none bind 0 0`, `lxc.mount.entry = ${C1}/home srv/home none bind 0 0`)));
    expect(err.exitCode).toBe(ExitCode.badInput);
    expect(err.message).toBe(`volume 'home' appears twice in the config of ${C1}`);
    // The rootfs bound a second time is a duplicate too.
    expect(errorOf(() => volumesOf(lxc2(`lxc.mount.entry = ${C1}/rootfs mnt none bind 0 0`))).message).toMatch(/'rootfs' appears twice/);
  });

  it('refuses a config without a rootfs', () => {
    for (const text of ['lxc.utsname = c1\n', '', 'lxc.rootfs =\n', '# lxc.rootfs = /x/c1/rootfs\n', 'lxc.rootfs.mount = /x/c1/rootfs\n']) {
      const err = errorOf(() => volumesOf(text));
      expect(err.exitCode).toBe(ExitCode.badInput);
      expect(err.message).toBe(`no lxc.rootfs or lxc.rootfs.path in the config of ${C1}`);
    }
  });

  it('refuses a rootfs outside the container directory', () => {
    for (const rootfs of ['/srv/images/rootfs', `${LXC}/c2/rootfs`, `${C1}/rootfs/inner`, `${LXC}/rootfs`]) {
      const err = errorOf(() => volumesOf(`lxc.rootfs = ${rootfs}\n`));
      expect(err.exitCode).toBe(ExitCode.badInput);
      expect(err.message).toBe(`rootfs ${rootfs} is not inside the container directory ${C1}`);
    }
  });

  it('refuses an unsupported backend', () => {
    expect(errorOf(() => volumesOf(`lxc.rootfs = overlayfs:/base:${C1}/delta\n`)).exitCode).toBe(ExitCode.badInput);
  });

  it('uses the last lxc.rootfs of a config that sets it twice (as LXC does)', () => {
    expect(volumesOf(`lxc.rootfs = /old/c1/base\nlxc.rootfs = ${C1}/rootfs\n`).volumes).toEqual([FOUR[0]]);
  });

  it('accepts a trailing slash or a relative container directory spelled with ./', () => {
    expect(configVolumes(parseLxcConfig(SUBUTAI_LXC2), `${C1}/`).volumes).toEqual(FOUR);
    expect(configVolumes(parseLxcConfig(SUBUTAI_LXC2), `${LXC}/./c1`).volumes).toEqual(FOUR);
  });
});

describe('configVolumes: LXC 3 syntax', () => {
  it('reads lxc.rootfs.path with the btrfs: prefix', () => {
    const v = volumesOf(SUBUTAI_LXC3);
    expect(v.volumes).toEqual(FOUR);
    expect(v.skipped).toEqual([]);
  });

  it('reads lxc.rootfs.path with the dir: prefix or none', () => {
    expect(volumesOf(SUBUTAI_LXC3.replace('btrfs:', 'dir:')).volumes).toEqual(FOUR);
    expect(volumesOf(SUBUTAI_LXC3.replace('btrfs:', '')).volumes).toEqual(FOUR);
  });

  it('reads the LXC 3 sandbox config of the e2e tests', () => {
    const cdir = '/tmp/sbk-test-y/mnt/lxc/c3';
    const v = configVolumes(parseLxcConfig(sampleConfig(cdir, 'c3', ['rootfs', 'home'], true)), cdir);
    expect(v.volumes).toEqual([
      { name: 'rootfs', source: `${cdir}/rootfs`, mount: '/' },
      { name: 'home', source: `${cdir}/home`, mount: '/home' },
    ]);
  });

  it('prefers lxc.rootfs.path over a leftover lxc.rootfs', () => {
    expect(volumesOf(`lxc.rootfs = /old/place/rootfs\nlxc.rootfs.path = btrfs:${C1}/rootfs\n`).volumes).toEqual([FOUR[0]]);
  });

  it('refuses overlay and other backends', () => {
    for (const value of ['overlay:/base/rootfs:/x/c1/delta0', 'lvm:/dev/lxc/c1', 'zfs:lxd/containers/c1']) {
      const err = errorOf(() => volumesOf(`lxc.rootfs.path = ${value}\n`));
      expect(err.exitCode).toBe(ExitCode.badInput);
      expect(err.message).toMatch(/^lxc.rootfs backend '\w+' is not supported/);
    }
  });

  it('takes an absolute destination under the rootfs path (no lxc.rootfs.mount) as a path inside it', () => {
    const v = volumesOf(`lxc.rootfs.path = btrfs:${C1}/rootfs\nlxc.mount.entry = ${C1}/opt ${C1}/rootfs/opt none bind,create=dir 0 0\n`);
    expect(v.volumes[1]).toEqual({ name: 'opt', source: `${C1}/opt`, mount: '/opt' });
  });
});

describe('configVolumes: a config written for another lxc dir', () => {
  const local = '/tmp/sbk-test-z/mnt/lxc/c1';

  it('maps the paths of the original place to the container’s directory here (LXC 2)', () => {
    const v = volumesOf(SUBUTAI_LXC2, local);
    expect(v.volumes).toEqual(FOUR.map((x) => ({ ...x, source: `${local}/${x.name}` })));
    expect(v.skipped.map((s) => s.source)).toEqual(['proc', 'sysfs', '/dev/fuse']);
  });

  it('maps the paths of the original place to the container’s directory here (LXC 3)', () => {
    expect(volumesOf(SUBUTAI_LXC3, local).volumes).toEqual(FOUR.map((x) => ({ ...x, source: `${local}/${x.name}` })));
  });

  it('maps an absolute destination under the original rootfs mount', () => {
    const v = volumesOf(`lxc.rootfs = ${C1}/rootfs\nlxc.rootfs.mount = ${C1}/rootfs\nlxc.mount.entry = ${C1}/opt ${C1}/rootfs/opt none bind 0 0\n`, local);
    expect(v.volumes).toEqual([
      { name: 'rootfs', source: `${local}/rootfs`, mount: '/' },
      { name: 'opt', source: `${local}/opt`, mount: '/opt' },
    ]);
  });

  it('does not map another container’s directory of the original place', () => {
    const v = volumesOf(lxc2(`lxc.mount.entry = ${LXC}/c2/home home none bind 0 0`), local);
    expect(v.volumes).toEqual([{ name: 'rootfs', source: `${local}/rootfs`, mount: '/' }]);
    expect(v.skipped).toEqual([{ source: `${LXC}/c2/home`, reason: 'a host path outside the container directory: not in the backup' }]);
  });

  it('refuses a config of another container (its rootfs is not in a directory of this name)', () => {
    const err = errorOf(() => volumesOf(SUBUTAI_LXC2, '/tmp/sbk-test-z/mnt/lxc/c9'));
    expect(err.exitCode).toBe(ExitCode.badInput);
    expect(err.message).toMatch(/is not inside the container directory/);
  });
});

describe('readContainerConfig', () => {
  it('reads <dir>/config; a missing container is "not found"', async () => {
    const tmp = await mkdtemp(path.join(os.tmpdir(), 'sbk-lxc-'));
    try {
      const cdir = path.join(tmp, 'c1');
      await mkdir(cdir);
      await writeFile(path.join(cdir, 'config'), SUBUTAI_LXC3);
      const cfg = await readContainerConfig(cdir);
      expect(serializeLxcConfig(cfg)).toBe(SUBUTAI_LXC3);

      const missing = await readContainerConfig(path.join(tmp, 'nope')).catch((e: unknown) => e);
      expect(missing).toBeInstanceOf(SbkError);
      expect((missing as SbkError).exitCode).toBe(ExitCode.notFound);
      expect((missing as SbkError).message).toBe(`no container at ${path.join(tmp, 'nope')} (no LXC config there)`);

      // A file where the container directory should be.
      await writeFile(path.join(tmp, 'afile'), 'x');
      const notDir = await readContainerConfig(path.join(tmp, 'afile')).catch((e: unknown) => e);
      expect((notDir as SbkError).exitCode).toBe(ExitCode.notFound);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
  });
});

describe('real configs (test/fixtures/lxc-configs)', () => {
  const FIXTURES = path.join(ROOT, 'test/fixtures/lxc-configs');
  const fixture = (name: string) => readFileSync(path.join(FIXTURES, name), 'utf8');
  const random = () => Buffer.from([0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc]);
  /** The lines a rewrite changed: [before, after]. */
  const changedLines = (before: string, after: string) => {
    const a = before.split('\n');
    const b = after.split('\n');
    expect(b).toHaveLength(a.length);
    return a.flatMap((l, i) => (l === b[i] ? [] : [[l, b[i]]]));
  };

  it('LXC 5 busybox: round-trips byte for byte; values read as LXC reads them (quotes removed)', () => {
    const text = fixture('lxc5-busybox.config');
    const cfg = parseLxcConfig(text);
    expect(serializeLxcConfig(cfg)).toBe(text);
    expect(configValue(cfg, 'lxc.uts.name')).toBe('c1');
    expect(configValue(cfg, 'lxc.rootfs.path')).toBe('btrfs:/var/lib/lxc/c1/rootfs');
  });

  it('LXC 5 busybox: the rootfs is the one volume; shm, mqueue and host binds are skipped, each saying why', () => {
    const v = configVolumes(parseLxcConfig(fixture('lxc5-busybox.config')), '/var/lib/lxc/c1');
    expect(v.volumes).toEqual([{ name: 'rootfs', source: '/var/lib/lxc/c1/rootfs', mount: '/' }]);
    const host = 'a host path outside the container directory: not in the backup';
    expect(v.skipped).toEqual([
      { source: 'shm', reason: 'not a path (type tmpfs)' },
      { source: 'mqueue', reason: 'not a path (type mqueue)' },
      ...['/lib', '/usr/lib', '/lib64', '/usr/lib64', '/sys/kernel/security'].map((source) => ({ source, reason: host })),
    ]);
  });

  it('LXC 5 busybox under a new name: only the rootfs path and the host name change, the quotes kept', () => {
    const text = fixture('lxc5-busybox.config');
    const { config } = rewriteConfigForRestore(parseLxcConfig(text), { fromDirs: ['/var/lib/lxc/c1'], toDir: '/srv/lxc/c2', newName: 'c2', random });
    expect(changedLines(text, serializeLxcConfig(config))).toEqual([
      ['lxc.rootfs.path = btrfs:/var/lib/lxc/c1/rootfs', 'lxc.rootfs.path = btrfs:/srv/lxc/c2/rootfs'],
      ['lxc.uts.name = "c1"', 'lxc.uts.name = "c2"'],
    ]);
  });

  it('Subutai LXC 2: the four volumes; id_map, includes, subutai.* keys and the host bind kept as written', () => {
    const text = fixture('subutai-lxc2.config');
    const cfg = parseLxcConfig(text);
    expect(serializeLxcConfig(cfg)).toBe(text);
    const dir = '/var/snap/subutai/common/lxc/web1';
    const v = configVolumes(cfg, dir);
    expect(v.volumes.map((x) => [x.name, x.source, x.mount])).toEqual(
      ['rootfs', 'home', 'opt', 'var'].map((n) => [n, `${dir}/${n}`, n === 'rootfs' ? '/' : `/${n}`]),
    );
    expect(v.skipped).toEqual([{ source: '/dev/fuse', reason: 'a host path outside the container directory: not in the backup' }]);
    expect(configValues(cfg, 'lxc.id_map')).toEqual(['u 0 4653056 65536', 'g 0 4653056 65536']);
  });

  it('Subutai LXC 2 under a new name: paths under the container directory, host name, MAC and veth pair change; nothing else', () => {
    const text = fixture('subutai-lxc2.config');
    const from = '/var/snap/subutai/common/lxc/web1';
    const to = '/var/snap/subutai/common/lxc/web2';
    const { config } = rewriteConfigForRestore(parseLxcConfig(text), { fromDirs: [from], toDir: to, newName: 'web2', random });
    expect(changedLines(text, serializeLxcConfig(config))).toEqual([
      [`lxc.rootfs = ${from}/rootfs`, `lxc.rootfs = ${to}/rootfs`],
      [`lxc.rootfs.mount = ${from}/rootfs`, `lxc.rootfs.mount = ${to}/rootfs`],
      ['lxc.utsname = web1', 'lxc.utsname = web2'],
      [`lxc.mount = ${from}/fstab`, `lxc.mount = ${to}/fstab`],
      ...['home', 'opt', 'var'].map((v) => [`lxc.mount.entry = ${from}/${v} ${v} none bind,rw 0 0`, `lxc.mount.entry = ${to}/${v} ${v} none bind,rw 0 0`]),
      ['lxc.network.hwaddr = 00:16:3e:a1:b2:c3', 'lxc.network.hwaddr = 12:34:56:78:9a:bc'],
      ['lxc.network.veth.pair = 00163ea1b2c3', 'lxc.network.veth.pair = veth789abc'],
    ]);
  });
});

describe('quoted values (LXC removes one pair of matching quotes)', () => {
  it('reads a quoted value without its quotes; a lone or mismatched quote stays', () => {
    const cfg = parseLxcConfig(`lxc.uts.name = "c1"\nlxc.rootfs.path = 'btrfs:${C1}/rootfs'\nlxc.a = "x\nlxc.b = "x'\nlxc.c = "\nlxc.d = ""\n`);
    expect(configValue(cfg, 'lxc.uts.name')).toBe('c1');
    expect(configValue(cfg, 'lxc.a')).toBe('"x');
    expect(configValue(cfg, 'lxc.b')).toBe(`"x'`);
    expect(configValue(cfg, 'lxc.c')).toBe('"');
    expect(configValue(cfg, 'lxc.d')).toBe('');
    expect(configVolumes(cfg, C1).volumes).toEqual([FOUR[0]]);
  });

  it('a quoted path is rewritten inside its quotes; the line keeps its spacing and a CRLF end', () => {
    const text = `lxc.rootfs.path = "btrfs:${C1}/rootfs"\r\nlxc.mount.entry='${C1}/home home none bind 0 0'  \r\nlxc.uts.name =\t"c1"\r\n`;
    const { config } = rewriteConfigForRestore(parseLxcConfig(text), { fromDirs: [C1], toDir: `${LXC}/c2`, newName: 'c2' });
    expect(serializeLxcConfig(config)).toBe(
      `lxc.rootfs.path = "btrfs:${LXC}/c2/rootfs"\r\nlxc.mount.entry='${LXC}/c2/home home none bind 0 0'  \r\nlxc.uts.name =\t"c2"\r\n`,
    );
  });
});

describe('startFailureReason (lxc-start log)', () => {
  it('is the reason of the first ERROR line', () => {
    const log = [
      'lxc-start c2 20261205085030.765 ERROR    start - ../src/lxc/start.c:start:2197 - No such file or directory - Failed to exec "/sbin/init"',
      'lxc-start c2 20261205085030.766 ERROR    lxc_start - ../src/lxc/tools/lxc_start.c:main:306 - The container failed to start',
    ].join('\n');
    expect(startFailureReason(log)).toBe('No such file or directory - Failed to exec "/sbin/init"');
    expect(startFailureReason('')).toBeUndefined();
    expect(startFailureReason('lxc-start c2 20261205085030.765 INFO     conf - x.c:f:1 - fine')).toBeUndefined();
  });
});
