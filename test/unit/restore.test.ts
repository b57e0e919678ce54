// The LXC config rewrite of a restore under a new name or into another LXC dir (no BTRFS).
// sbk-unpack itself is run in test/e2e (unpack-checks, restore, restore-*).
import { describe, it, expect } from 'vitest';
import { parseLxcConfig, serializeLxcConfig, rewriteConfigForRestore, randomLocalMac, vethPairName } from '../../src/formats/lxc-config.js';

describe('rewriteConfigForRestore', () => {
  const fixed = (seed: number) => (n: number) => Buffer.alloc(n, seed);

  const lxc2 = (d: string) =>
    [
      '# Subutai container c1',
      `lxc.rootfs = ${d}/rootfs`,
      `lxc.rootfs.mount = ${d}/rootfs`,
      `lxc.mount.entry = ${d}/home home none bind,rw 0 0`,
      `lxc.mount.entry = ${d}10/opt opt none bind,rw 0 0`,
      'lxc.mount.entry = proc proc proc nodev,noexec,nosuid 0 0',
      `lxc.mount = ${d}/fstab`,
      `lxc.log.file=${d}/c1.log`,
      'lxc.utsname = c1',
      'lxc.network.type = veth',
      'lxc.network.veth.pair = veth5a2b01',
      'lxc.network.hwaddr = 00:16:3e:5a:2b:01',
      'lxc.network.type = veth',
      'lxc.network.hwaddr = 00:16:3e:5a:2b:02',
      'lxc.network.veth.pair = veth5a2b02',
      'subutai.template = ubuntu',
      '',
    ].join('\n');

  it('moves paths, renames, and gives each network a fresh MAC with the veth name derived from it', () => {
    const from = '/var/snap/subutai/common/lxc/c1';
    const to = '/srv/lxc/web';
    let seed = 0x10;
    const { config, changes } = rewriteConfigForRestore(parseLxcConfig(lxc2(from)), {
      fromDirs: [from],
      toDir: to,
      newName: 'web',
      random: (n) => fixed(seed++)(n),
    });
    const out = serializeLxcConfig(config);
    expect(out).toBe(
      [
        '# Subutai container c1',
        `lxc.rootfs = ${to}/rootfs`,
        `lxc.rootfs.mount = ${to}/rootfs`,
        `lxc.mount.entry = ${to}/home home none bind,rw 0 0`,
        `lxc.mount.entry = ${from}10/opt opt none bind,rw 0 0`, // another container's dir: kept
        'lxc.mount.entry = proc proc proc nodev,noexec,nosuid 0 0',
        `lxc.mount = ${to}/fstab`,
        `lxc.log.file=${to}/c1.log`,
        'lxc.utsname = web',
        'lxc.network.type = veth',
        'lxc.network.veth.pair = veth101010', // the pair line comes first: same network's MAC
        'lxc.network.hwaddr = 12:10:10:10:10:10',
        'lxc.network.type = veth',
        'lxc.network.hwaddr = 12:11:11:11:11:11',
        'lxc.network.veth.pair = veth111111',
        'subutai.template = ubuntu',
        '',
      ].join('\n'),
    );
    expect(changes).toHaveLength(10);
  });

  it('reads LXC 3 keys (lxc.rootfs.path = btrfs:…, lxc.uts.name, lxc.net.N.*)', () => {
    const from = '/var/lib/lxc/c1';
    const text = [
      `lxc.rootfs.path = btrfs:${from}/rootfs`,
      `lxc.mount.fstab = ${from}/fstab`,
      'lxc.uts.name = c1',
      'lxc.net.0.hwaddr = 00:16:3e:00:00:01',
      'lxc.net.1.veth.pair = vethx',
      'lxc.net.0.veth.pair = veth000001',
      'lxc.net.1.hwaddr = 00:16:3e:00:00:02',
    ].join('\n');
    let seed = 0xa0;
    const out = serializeLxcConfig(
      rewriteConfigForRestore(parseLxcConfig(text), { fromDirs: [from], toDir: '/var/lib/lxc/c2', newName: 'c2', random: (n) => fixed(seed++)(n) }).config,
    );
    expect(out.split('\n')).toEqual([
      'lxc.rootfs.path = btrfs:/var/lib/lxc/c2/rootfs',
      'lxc.mount.fstab = /var/lib/lxc/c2/fstab',
      'lxc.uts.name = c2',
      'lxc.net.0.hwaddr = a2:a0:a0:a0:a0:a0',
      'lxc.net.1.veth.pair = vetha1a1a1',
      'lxc.net.0.veth.pair = vetha0a0a0',
      'lxc.net.1.hwaddr = a2:a1:a1:a1:a1:a1',
    ]);
  });

  it('changes nothing for the same name in the same place, byte for byte', () => {
    const text = lxc2('/var/lib/lxc/c1').replace('lxc.utsname = c1', '  lxc.utsname   =   c1');
    const r = rewriteConfigForRestore(parseLxcConfig(text), { fromDirs: ['/var/lib/lxc/c1'], toDir: '/var/lib/lxc/c1' });
    expect(r.changes).toEqual([]);
    expect(serializeLxcConfig(r.config)).toBe(text);
  });

  it('same name, another LXC dir: paths only, the MAC is kept', () => {
    const r = rewriteConfigForRestore(parseLxcConfig(lxc2('/old/lxc/c1')), { fromDirs: ['/old/lxc/c1'], toDir: '/new/lxc/c1' });
    const out = serializeLxcConfig(r.config);
    expect(out).toContain('lxc.rootfs = /new/lxc/c1/rootfs\n');
    expect(out).toContain('lxc.network.hwaddr = 00:16:3e:5a:2b:01\n');
    expect(out).toContain('lxc.utsname = c1\n');
  });

  it('keeps fstab escapes and never rewrites from a root directory', () => {
    const text = 'lxc.mount.entry = /a\\040b/c1/home home none bind 0 0\nlxc.rootfs = /rootfs\n';
    const out = serializeLxcConfig(
      rewriteConfigForRestore(parseLxcConfig(text), { fromDirs: ['/a b/c1', '/'], toDir: '/x y/c2' }).config,
    );
    expect(out).toBe('lxc.mount.entry = /x\\040y/c2/home home none bind 0 0\nlxc.rootfs = /rootfs\n');
  });

  it('makes locally administered unicast MACs and 10-character veth names', () => {
    for (let i = 0; i < 256; i++) {
      const mac = randomLocalMac(() => Buffer.alloc(6, i));
      const first = parseInt(mac.slice(0, 2), 16);
      expect(first & 0x02).toBe(0x02);
      expect(first & 0x01).toBe(0);
      expect(vethPairName(mac)).toMatch(/^veth[0-9a-f]{6}$/);
    }
  });
});

