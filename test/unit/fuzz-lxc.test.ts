// Property-based fuzzing of the LXC config parser and what is read from it:
// any text parses and serializes back byte for byte; configVolumes on random and hostile
// configs gives volumes that are the container's own subvolumes or fails with an SbkError
// (exit 3), never another exception; the restore rewrite moves exactly the paths under the old
// container directories and keeps every other byte; on the lines of real configs (LXC 5, Subutai
// LXC 2, quoted, any spacing) a rewrite under a new name changes only what names the container.
// Fixed seeds.
import path from 'node:path';
import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, it, expect } from 'vitest';
import {
  parseLxcConfig,
  serializeLxcConfig,
  configVolumes,
  rewriteConfigForRestore,
  vethPairName,
  unquote,
  type ConfigVolumes,
} from '../../src/formats/lxc-config.js';
import { SbkError, ExitCode } from '../../src/core/errors.js';
import { ROOT } from '../helpers/sandbox.js';

describe('fuzz: parseLxcConfig / serializeLxcConfig', () => {
  it('any text round-trips byte for byte; keyed lines split at the first =, trimmed', () => {
    const text = fc.oneof(
      fc.string({ maxLength: 200 }),
      fc.string({ unit: 'binary', maxLength: 200 }),
      fc.array(fc.oneof(fc.constantFrom('', '#', '=', ' = ', 'a=b', ' lxc.rootfs = /x ', '\r', 'k==v', '\t# c = d'), fc.string({ maxLength: 20 })), { maxLength: 10 }).map((l) => l.join('\n')),
    );
    fc.assert(
      fc.property(text, (t) => {
        const cfg = parseLxcConfig(t);
        expect(serializeLxcConfig(cfg)).toBe(t);
        expect(cfg.lines).toHaveLength(t.split('\n').length);
        for (const l of cfg.lines) {
          if (l.key === undefined) {
            expect(l.value).toBeUndefined();
            continue;
          }
          const trimmed = l.raw.trim();
          expect(trimmed.startsWith('#')).toBe(false);
          const eq = trimmed.indexOf('=');
          expect(l.key).toBe(trimmed.slice(0, eq).trim());
          expect(l.value).toBe(trimmed.slice(eq + 1).trim());
        }
        // Serializing a parsed, re-parsed config changes nothing either.
        expect(parseLxcConfig(serializeLxcConfig(cfg))).toEqual(cfg);
      }),
      { seed: 4242, numRuns: 2000 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Random configs, from a grammar of what LXC configs hold (and what they should not)

const LXC = '/var/lib/lxc';
const component = fc.constantFrom('var', 'lib', 'lxc', 'c1', 'c2', 'rootfs', 'home', 'opt', '..', '.', '', 'my\\040data', 'meta', 'x y', 'rootfs2', 'c1-old', '__proto__', 'a\\012b');
const pathArb = fc.oneof(
  fc.tuple(fc.boolean(), fc.array(component, { maxLength: 5 })).map(([abs, cs]) => (abs ? '/' : '') + cs.join('/')),
  fc.constantFrom(`${LXC}/c1/rootfs`, `${LXC}/c1/home`, `${LXC}/c1/opt`, `${LXC}/c1`, `${LXC}/c2/home`, `${LXC}/c1/rootfs/srv`, '/old/place/c1/rootfs', '/old/place/c1/var', '/srv/c1/x', '/', ''),
);
const rootfsValue = fc.tuple(fc.constantFrom('', '', 'btrfs:', 'dir:', 'overlay:', 'lvm:', 'Btrfs:', 'btrfs:btrfs:'), pathArb).map(([p, v]) => p + v);
const mountEntry = fc
  .tuple(
    fc.oneof(pathArb, fc.constantFrom('proc', 'sysfs', 'tmpfs', 'none', '')),
    fc.oneof(pathArb, fc.constantFrom('home', 'srv/my\\040data', `${LXC}/c1/rootfs/var`, '/old/place/c1/rootfs/opt')),
    fc.constantFrom('none', 'proc', 'bind', ''),
    fc.constantFrom('bind,rw', 'bind,create=file', 'create=dir', 'bind,create=file,optional', 'rw', ''),
    fc.constantFrom(' 0 0', '', ' 0', '\t0\t0'),
  )
  .map(([src, dest, type, opts, tail]) => [src, dest, type, opts].join(' ') + tail);
const lineArb = fc.oneof(
  { weight: 3, arbitrary: fc.tuple(fc.constantFrom('lxc.rootfs', 'lxc.rootfs.path'), rootfsValue) },
  { weight: 4, arbitrary: fc.tuple(fc.constant('lxc.mount.entry'), mountEntry) },
  { weight: 1, arbitrary: fc.tuple(fc.constant('lxc.rootfs.mount'), pathArb) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('lxc.utsname', 'lxc.include', 'lxc.rootfs.backend', 'lxc.network.type', 'lxc.net.0.hwaddr'), fc.string({ maxLength: 12 })) },
  { weight: 1, arbitrary: fc.tuple(fc.constantFrom('#', '', 'garbage'), fc.string({ maxLength: 12 })) },
);
const configText = fc
  .tuple(fc.array(fc.tuple(lineArb, fc.constantFrom(' = ', '=', '\t=  ', ' =')), { maxLength: 8 }), fc.constantFrom('\n', '\r\n'))
  .map(([lines, nl]) => lines.map(([[k, v], eq]) => (k === '#' || k === '' || k === 'garbage' ? k + v : k + eq + v)).join(nl) + nl);
const containerDir = fc.constantFrom(`${LXC}/c1`, `${LXC}/c1/`, `${LXC}/./c1`, 'relative/c1', '/c1', `${LXC}/c 1`, '/old/place/c1');

describe('fuzz: configVolumes', () => {
  it('the container\'s own volumes, or an SbkError (3); never another exception', () => {
    let ok = 0;
    fc.assert(
      fc.property(configText, containerDir, (text, dir) => {
        const cfg = parseLxcConfig(text);
        let r: ConfigVolumes;
        try {
          r = configVolumes(cfg, dir);
        } catch (err) {
          if (!(err instanceof SbkError)) throw err;
          expect(err.exitCode).toBe(ExitCode.badInput);
          return;
        }
        ok++;
        const here = path.resolve(dir);
        expect(r.volumes.length).toBeGreaterThan(0);
        expect(r.volumes[0]!.mount).toBe('/');
        const entries = cfg.lines.filter((l) => l.key === 'lxc.mount.entry').length;
        expect(r.volumes.length + r.skipped.length).toBe(1 + entries);
        const names = new Set<string>();
        for (const v of r.volumes) {
          // A direct child of the container directory: a volume never points elsewhere.
          expect(path.dirname(v.source)).toBe(here);
          expect(path.basename(v.source)).toBe(v.name);
          expect(['', '.', '..']).not.toContain(v.name);
          expect(v.name).not.toContain('/');
          expect(names.has(v.name)).toBe(false);
          names.add(v.name);
          expect(v.mount.startsWith('/')).toBe(true);
          expect(path.posix.normalize(v.mount)).toBe(v.mount);
          expect(v.mount === '/' || !v.mount.endsWith('/')).toBe(true);
          expect(v.mount.split('/')).not.toContain('..');
        }
      }),
      { seed: 4243, numRuns: 3000 },
    );
    expect(ok).toBeGreaterThan(100);
  });
});

// ---------------------------------------------------------------------------------------------
// The restore rewrite

describe('fuzz: rewriteConfigForRestore', () => {
  const FROM = ['/var/lib/lxc/c1', '/old/place/c1', '/srv/my c1'];
  const TO = ['/new/lxc/c2', '/var/lib/lxc/c3', '/with space/c4', '/back\\slash/c5'];
  /** How an fstab field writes a path (splitFstabFields reads \ooo escapes). */
  const fstab = (d: string) => d.replace(/[ \t\n\\]/g, (c) => '\\' + c.charCodeAt(0).toString(8).padStart(3, '0'));
  const spaces = (d: string) => d.replace(/ /g, '\\040');
  // Tokens of a value: text before the directory, which form of it ('raw' as written, 'esc' with
  // \040 for spaces, or none: a token that only looks like it), and text after.
  type Token = { pre: string; form: 'raw' | 'esc' | 'none'; post: string; word?: string };
  const tokenArb: fc.Arbitrary<Token> = fc.oneof(
    fc.constantFrom<Token>(
      { pre: '', form: 'raw', post: '' },
      { pre: '', form: 'raw', post: '/rootfs' },
      { pre: '', form: 'raw', post: '/rootfs/var/log' },
      { pre: 'btrfs:', form: 'raw', post: '/rootfs' },
      { pre: '', form: 'esc', post: '/home' },
      { pre: '', form: 'none', post: '2/x' },
      { pre: '', form: 'none', post: '-old' },
      { pre: '/prefix', form: 'none', post: '' },
      { pre: 'x', form: 'none', post: '/y' },
    ),
    fc.stringMatching(/^[a-z0-9=.]{1,6}$/).map((w) => ({ pre: '', form: 'none' as const, post: '', word: w })),
  );
  const SEP = fc.constantFrom(' ', '  ', '\t', ',');
  const KEYS = ['lxc.rootfs', 'lxc.rootfs.path', 'lxc.mount.entry', 'lxc.mount.fstab', 'lxc.hook.pre-start', 'lxc.log.file', 'subutai.config.path'];

  it('moves every path under an old container directory (fstab-escaped in mount entries), keeps every other byte', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...FROM),
        fc.constantFrom(...TO),
        fc.subarray(FROM),
        fc.array(fc.tuple(fc.constantFrom(...KEYS), fc.array(fc.tuple(tokenArb, SEP), { minLength: 1, maxLength: 5 })), { maxLength: 6 }),
        (from, to, others, lines) => {
          const write = (t: Token) => t.word ?? t.pre + (t.form === 'esc' ? spaces(from) : from) + t.post;
          const expect1 = (key: string, t: Token) => {
            if (t.word !== undefined || t.form === 'none') return write(t);
            const esc = t.form === 'esc' && from.includes(' ');
            const dir = key === 'lxc.mount.entry' ? fstab(to) : esc ? spaces(to) : to;
            return t.pre + dir + t.post;
          };
          const text =
            ['# a comment naming ' + from, '', 'no equals sign ' + from, ...lines.map(([k, toks]) => `${k} = ${toks.map(([t, s]) => write(t) + s).join('').trim()}`)].join('\n') + '\n';
          const want = lines.map(([k, toks]) => toks.map(([t, s]) => expect1(k, t) + s).join('').trim());
          const cfg = parseLxcConfig(text);
          // Other old directories may be given too: no token of this config is under them.
          const { config } = rewriteConfigForRestore(cfg, { fromDirs: [from, ...others], toDir: to });
          expect(config.lines).toHaveLength(cfg.lines.length);
          // Comments, blank lines and lines without '=' are kept as they were.
          for (let i = 0; i < 3; i++) expect(config.lines[i]).toBe(cfg.lines[i]);
          expect(config.lines.slice(3, -1).map((l) => l.value)).toEqual(want);
          // Lines whose value did not change are kept byte for byte.
          config.lines.forEach((l, i) => {
            if (l.value === cfg.lines[i]!.value) expect(l.raw).toBe(cfg.lines[i]!.raw);
          });
          const out = serializeLxcConfig(config);
          expect(serializeLxcConfig(parseLxcConfig(out))).toBe(out);
          // Doing it again changes nothing: the new directory is not under an old one.
          expect(serializeLxcConfig(rewriteConfigForRestore(config, { fromDirs: [from], toDir: to }).config)).toBe(out);
        },
      ),
      { seed: 4244, numRuns: 600 },
    );
  });

  it('a restored config still names its volumes: configVolumes reads back what the rewrite wrote', () => {
    fc.assert(
      fc.property(fc.constantFrom(...FROM), fc.constantFrom(...TO), fc.subarray(['home', 'opt', 'var', 'my data']), fc.boolean(), (from, to, vols, lxc3) => {
        const entry = (v: string) => `lxc.mount.entry = ${fstab(from)}/${fstab(v)} ${fstab(v)} none bind,rw 0 0`;
        const text = [lxc3 ? `lxc.rootfs.path = btrfs:${from}/rootfs` : `lxc.rootfs = ${from}/rootfs`, ...vols.map(entry)].join('\n') + '\n';
        const before = configVolumes(parseLxcConfig(text), from);
        const { config } = rewriteConfigForRestore(parseLxcConfig(text), { fromDirs: [from], toDir: to });
        const after = configVolumes(config, to);
        expect(after.skipped).toEqual([]);
        expect(after.volumes).toEqual(before.volumes.map((v) => ({ ...v, source: path.join(to, v.name) })));
      }),
      { seed: 4246, numRuns: 300 },
    );
  });

  it('a new name: host name set, one fresh locally administered MAC per network, veth names from those MACs', () => {
    const netLine = fc.oneof(
      fc.constantFrom('lxc.network.type = veth', 'lxc.network.hwaddr = 00:16:3e:00:00:01', 'lxc.network.veth.pair = vethold', 'lxc.network.link = lxcbr0'),
      fc.tuple(fc.nat(3), fc.constantFrom('type = veth', 'hwaddr = 00:16:3e:00:00:02', 'veth.pair = vethold2', 'link = br0')).map(([n, kv]) => `lxc.net.${n}.${kv}`),
      fc.constantFrom('lxc.utsname = old', 'lxc.uts.name = old', `lxc.rootfs = ${LXC}/c1/rootfs`, '# lxc.network.hwaddr = keep'),
    );
    fc.assert(
      fc.property(fc.array(netLine, { maxLength: 12 }), fc.stringMatching(/^[a-z][a-z0-9-]{0,10}$/), (ls, newName) => {
        let counter = 0;
        const random = (n: number) => Buffer.from(Array.from({ length: n }, () => (counter++ * 37 + 11) & 0xff));
        const cfg = parseLxcConfig(ls.join('\n'));
        const { config } = rewriteConfigForRestore(cfg, { fromDirs: [`${LXC}/c1`], toDir: `${LXC}/${newName}`, newName, random });
        expect(config.lines).toHaveLength(cfg.lines.length);
        const macByNet = new Map<string, string>();
        for (const [i, l] of config.lines.entries()) {
          if (l.key === undefined) {
            expect(l).toBe(cfg.lines[i]);
            continue;
          }
          if (l.key === 'lxc.utsname' || l.key === 'lxc.uts.name') expect(l.value).toBe(newName);
          if (l.key.endsWith('.hwaddr')) {
            expect(l.value).toMatch(/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
            const first = parseInt(l.value!.slice(0, 2), 16);
            expect(first & 0x03).toBe(0x02); // locally administered, unicast
            expect(l.value).not.toBe(cfg.lines[i]!.value);
          }
          if (l.key === 'lxc.rootfs') expect(l.value).toBe(`${LXC}/${newName}/rootfs`);
          // LXC 3 numbered networks: the veth name follows the MAC of the same network.
          const m = /^lxc\.net\.(\d+)\.(hwaddr|veth\.pair)$/.exec(l.key);
          if (m && m[2] === 'hwaddr') macByNet.set(m[1]!, l.value!);
        }
        for (const l of config.lines) {
          const m = /^lxc\.net\.(\d+)\.veth\.pair$/.exec(l.key ?? '');
          if (m && macByNet.has(m[1]!)) expect(l.value).toBe(vethPairName(macByNet.get(m[1]!)!));
        }
        const macs = [...macByNet.values()];
        expect(new Set(macs).size).toBe(macs.length);
      }),
      { seed: 4245, numRuns: 500 },
    );
  });
});

describe('regressions found by fuzzing', () => {
  it('restoring into an LXC dir with a space escapes it in mount entries, so the volumes are still found', () => {
    const text = 'lxc.rootfs = /var/lib/lxc/c1/rootfs\nlxc.mount.entry = /var/lib/lxc/c1/home home none bind,rw 0 0\n';
    const { config } = rewriteConfigForRestore(parseLxcConfig(text), { fromDirs: ['/var/lib/lxc/c1'], toDir: '/srv/my lxc/c2' });
    expect(serializeLxcConfig(config)).toBe('lxc.rootfs = /srv/my lxc/c2/rootfs\nlxc.mount.entry = /srv/my\\040lxc/c2/home home none bind,rw 0 0\n');
    expect(configVolumes(config, '/srv/my lxc/c2').volumes.map((v) => [v.name, v.source])).toEqual([
      ['rootfs', '/srv/my lxc/c2/rootfs'],
      ['home', '/srv/my lxc/c2/home'],
    ]);
  });
});

// ---------------------------------------------------------------------------------------------
// Real configs: the lines of test/fixtures/lxc-configs (LXC 5 busybox, Subutai LXC 2) and what
// else LXC configs hold (lxc.idmap, includes, quoted values), in random order, spacing and quotes

describe('fuzz: real config lines', () => {
  const FIXTURES = path.join(ROOT, 'test/fixtures/lxc-configs');
  const DIR = '@DIR@';
  const pool = [
    ...readFileSync(path.join(FIXTURES, 'lxc5-busybox.config'), 'utf8').replaceAll('/var/lib/lxc/c1', DIR).split('\n'),
    ...readFileSync(path.join(FIXTURES, 'subutai-lxc2.config'), 'utf8').replaceAll('/var/snap/subutai/common/lxc/web1', DIR).split('\n'),
    'lxc.idmap = u 0 100000 65536',
    'lxc.idmap = g 0 100000 65536',
    'lxc.include = /usr/share/lxc/config/common.conf',
    `lxc.include = ${DIR}/extra.conf`,
    'lxc.net.0.hwaddr = 00:16:3e:00:00:01',
    'lxc.net.0.veth.pair = vethc1',
    'lxc.mount.entry = tmpfs tmp tmpfs defaults,create=dir 0 0',
    'lxc.mount.entry = proc proc proc nodev,noexec,nosuid 0 0',
    `lxc.log.file = ${DIR}/c1.log`,
    'lxc.log.file = /var/log/lxc/c1.log',
  ].filter((l) => l.trim() !== '');
  const NAMING = /^lxc\.(utsname|uts\.name|network\.hwaddr|network\.veth\.pair|net\.\d+\.hwaddr|net\.\d+\.veth\.pair)$/;
  const lineArb = fc
    .tuple(fc.constantFrom(...pool), fc.constantFrom('', '"', "'"), fc.constantFrom(' = ', '=', ' =\t', '  =  '), fc.constantFrom('', ' ', '\r'))
    .map(([line, q, eq, tail]) => {
      const i = line.indexOf('=');
      if (line.trim().startsWith('#') || i < 0) return line + tail;
      return line.slice(0, i).trim() + eq + q + line.slice(i + 1).trim() + q + tail;
    });

  it('parse/serialize keeps every line as written; a rewrite under a new name changes only what names the container', () => {
    fc.assert(
      fc.property(
        fc.array(lineArb, { maxLength: 30 }),
        fc.constantFrom('/var/lib/lxc/c1', '/var/snap/subutai/common/lxc/web1', '/srv/lxc/c1'),
        fc.constantFrom('/var/lib/lxc/c2', '/srv/other/web2', '/var/snap/subutai/common/lxc/c1-new'),
        (lines, from, to) => {
          const text = lines.join('\n').replaceAll(DIR, from) + '\n';
          const cfg = parseLxcConfig(text);
          expect(serializeLxcConfig(cfg)).toBe(text);
          const newName = path.basename(to);
          const { config } = rewriteConfigForRestore(cfg, { fromDirs: [from], toDir: to, newName });
          expect(config.lines).toHaveLength(cfg.lines.length);
          cfg.lines.forEach((l, i) => {
            const n = config.lines[i]!;
            if (l.key === undefined) return expect(n).toBe(l);
            const { inner, quote } = unquote(l.value!);
            const mine = inner.includes(from + '/') || inner.endsWith(from);
            if (!NAMING.test(l.key) && !mine) return expect(n.raw).toBe(l.raw);
            // Changed in place: key, spacing, quotes and line end as written.
            expect(n.raw.startsWith(l.raw.slice(0, l.raw.indexOf('=') + 1))).toBe(true);
            expect(/\s*$/.exec(n.raw)![0]).toBe(/\s*$/.exec(l.raw)![0]);
            const got = unquote(n.value!);
            expect(got.quote).toBe(quote);
            if (/uts/.test(l.key)) expect(got.inner).toBe(newName);
            else if (/hwaddr$/.test(l.key)) expect(got.inner).toMatch(/^[0-9a-f][26ae](:[0-9a-f]{2}){5}$/);
            else if (/veth\.pair$/.test(l.key)) expect(got.inner).toMatch(/^veth[0-9a-f]{6}$/);
            else expect(got.inner).toBe(inner.replaceAll(from, to));
          });
        },
      ),
      { seed: 4247, numRuns: 500 },
    );
  });
});
