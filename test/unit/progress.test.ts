// Progress on stderr: who draws (the mode rule of sbk(7) PERFORMANCE), what the lines say, and
// that redrawing is throttled (at most 4 a second, whatever the data rate) and leaves the
// terminal clean.
import { describe, it, expect, vi, afterEach } from 'vitest';
import {
  chooseProgressMode,
  formatBytes,
  formatDuration,
  formatRate,
  Progress,
  statusText,
  summaryText,
  Meter,
  type ProgressMode,
} from '../../src/core/progress.js';
import { SendSizeEstimator } from '../../src/stages/send/send.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

describe('chooseProgressMode', () => {
  const mode = (flag: boolean | undefined, quiet: boolean, stderrIsTTY: boolean, last: boolean) =>
    chooseProgressMode({ flag, quiet, stderrIsTTY, last });

  it('draws by default only on a terminal, in the last stage of a pipe', () => {
    expect(mode(undefined, false, true, true)).toBe('draw');
    expect(mode(undefined, false, true, false)).toBe('off'); // another stage downstream draws
    expect(mode(undefined, false, false, true)).toBe('off'); // stderr is a file: silent unless asked
  });

  it('--progress: a status line where it may draw, else one line per task', () => {
    expect(mode(true, false, true, true)).toBe('draw');
    expect(mode(true, false, true, false)).toBe('lines');
    expect(mode(true, false, false, true)).toBe('lines');
    expect(mode(true, false, false, false)).toBe('lines');
  });

  it('never with -q or --no-progress', () => {
    for (const tty of [true, false])
      for (const last of [true, false]) {
        expect(mode(true, true, tty, last)).toBe('off');
        expect(mode(undefined, true, tty, last)).toBe('off');
        expect(mode(false, false, tty, last)).toBe('off');
      }
  });
});

describe('formatting', () => {
  it('formats bytes with three significant digits and binary units', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(999)).toBe('999 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1024)).toBe('1.00 KiB');
    expect(formatBytes(1536)).toBe('1.50 KiB');
    expect(formatBytes(12.34 * MiB)).toBe('12.3 MiB');
    expect(formatBytes(123.4 * MiB)).toBe('123 MiB');
    expect(formatBytes(1023.9 * KiB)).toBe('1.00 MiB'); // not "1024 KiB"
    expect(formatBytes(2.21 * GiB)).toBe('2.21 GiB');
    expect(formatBytes(5 * 1024 * GiB)).toBe('5.00 TiB');
    expect(formatBytes(-1)).toBe('?');
    expect(formatBytes(NaN)).toBe('?');
  });

  it('formats rates and durations', () => {
    expect(formatRate(98.5 * MiB)).toBe('98.5 MiB/s');
    expect(formatRate(NaN)).toBe('–');
    expect(formatDuration(0)).toBe('0:00');
    expect(formatDuration(9_999)).toBe('0:09');
    expect(formatDuration(61_000)).toBe('1:01');
    expect(formatDuration(3_600_000 + 62_000)).toBe('1:01:02');
    expect(formatDuration(-5)).toBe('0:00');
  });

  it('status line: bytes, total and percentage, rate, elapsed, ETA, extra', () => {
    const m = new Meter('c1_1477298237_Full rootfs', 0);
    m.bytes = 300 * MiB;
    m.total = 1200 * MiB;
    m.estimate = true;
    m.extra = () => 'archive 43% of 420 MiB';
    expect(statusText('sbk-send', m, 3_000)).toBe(
      'sbk-send: c1_1477298237_Full rootfs  300 MiB / ~1.17 GiB (25%)  100 MiB/s  0:03  ETA 0:09  archive 43% of 420 MiB',
    );
    // Past an (under)estimated total: no more than 100%, no ETA.
    m.bytes = 1300 * MiB;
    m.extra = undefined;
    expect(statusText('sbk-send', m, 13_000)).toBe('sbk-send: c1_1477298237_Full rootfs  1.27 GiB / ~1.17 GiB (100%)  100 MiB/s  0:13');
  });

  it('status line of a compressor: in → out and the ratio', () => {
    const m = new Meter('c1_1477298237_Full', 1_000);
    m.bytes = 800 * MiB;
    m.out = 320 * MiB;
    expect(statusText('sbk-pack', m, 11_000)).toBe('sbk-pack: c1_1477298237_Full  800 MiB → 320 MiB (40.0%)  80.0 MiB/s  0:10');
    expect(summaryText('sbk-pack', m, 11_000)).toBe('sbk-pack: c1_1477298237_Full: 800 MiB → 320 MiB (40.0%), 10.0 s, 80.0 MiB/s');
    m.bytes = 1000 * MiB; // shown as 0.98 GiB, never with four digits
    expect(statusText('sbk-pack', m, 11_000)).toMatch(/^sbk-pack: c1_1477298237_Full {2}0\.98 GiB → /);
  });

  it('summary line of a volume; a task with no time or bytes does not divide by zero', () => {
    const m = new Meter('c1_1 var', 0);
    m.bytes = 1.5 * GiB;
    expect(summaryText('sbk-unpack', m, 75_000)).toBe('sbk-unpack: c1_1 var: 1.50 GiB, 1:15, 20.5 MiB/s');
    const empty = new Meter('c1_1 home', 5);
    expect(summaryText('sbk-send', empty, 5)).toBe('sbk-send: c1_1 home: 0 B, 0.0 s, –');
    expect(statusText('sbk-send', empty, 5)).toBe('sbk-send: c1_1 home  0 B  –  0:00');
  });
});

describe('Progress', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  function fake(mode: ProgressMode, opts: { columns?: number; clearFirst?: boolean } = {}) {
    let now = 0;
    const out: string[] = [];
    const p = new Progress({
      prog: 'sbk-send',
      mode,
      write: (s) => out.push(s),
      now: () => now,
      columns: () => opts.columns,
      clearFirst: opts.clearFirst,
    });
    return { p, out, advance: (ms: number) => (now += ms) };
  }

  it('draw: redraws at most 4 times a second however fast bytes arrive, then leaves a summary line', () => {
    vi.useFakeTimers();
    const { p, out, advance } = fake('draw');
    const m = p.start('c1_1 rootfs');
    // 10 seconds of data in 1 ms steps: 10,000 updates.
    for (let t = 0; t < 10_000; t++) {
      m.add(64 * KiB);
      advance(1);
      vi.advanceTimersByTime(1);
    }
    expect(p.draws).toBeGreaterThanOrEqual(38);
    expect(p.draws).toBeLessThanOrEqual(41);
    expect(out.length).toBe(p.draws);
    for (const line of out) {
      expect(line.startsWith('\r\x1b[K')).toBe(true);
      expect(line).not.toContain('\n');
    }
    expect(out.at(-1)).toMatch(/^\r\x1b\[Ksbk-send: c1_1 rootfs {2}6\d\d MiB {2}62\.5 MiB\/s {2}0:(09|10)$/);
    p.finish(m);
    expect(out.at(-1)).toBe('\r\x1b[Ksbk-send: c1_1 rootfs: 625 MiB, 10.0 s, 62.5 MiB/s\n');
    // Nothing is drawn after the task ended, and closing leaves nothing to clear.
    const n = out.length;
    vi.advanceTimersByTime(2_000);
    p.close();
    expect(out.length).toBe(n);
  });

  it('draw: nothing before the first interval, no redraw of a finished task; close clears a shown line', () => {
    vi.useFakeTimers();
    const { p, out, advance } = fake('draw');
    const m = p.start('c1_1 home');
    m.add(1);
    advance(100);
    vi.advanceTimersByTime(100);
    expect(out).toEqual([]);
    advance(200);
    vi.advanceTimersByTime(200);
    expect(out.length).toBe(1);
    p.close();
    expect(out.at(-1)).toBe('\r\x1b[K');
    advance(5_000);
    vi.advanceTimersByTime(5_000);
    expect(out.length).toBe(2);
  });

  it('draw: a line longer than the terminal is cut, so \\r can go back to its start', () => {
    vi.useFakeTimers();
    const { p, out, advance } = fake('draw', { columns: 40 });
    const m = p.start('c1_1477298237_Full a-rather-long-volume-name');
    m.add(MiB);
    advance(300);
    vi.advanceTimersByTime(300);
    const text = out[0]!.replace('\r\x1b[K', '');
    expect(text.length).toBeLessThanOrEqual(39);
    expect(text.endsWith('…')).toBe(true);
    p.close();
  });

  it('draw: the meter is sampled before each redraw (counters read, not fed)', () => {
    vi.useFakeTimers();
    const { p, out, advance } = fake('draw');
    let counter = 0;
    const m = p.start('c1_1_Full');
    m.out = 0;
    m.sample = () => {
      m.bytes = counter;
      m.out = counter / 4;
    };
    counter = 8 * MiB;
    advance(1_000);
    vi.advanceTimersByTime(1_000);
    expect(out.at(-1)).toContain('8.00 MiB → 2.00 MiB (25.0%)');
    counter = 16 * MiB;
    p.finish(m);
    expect(out.at(-1)).toBe('\r\x1b[Ksbk-send: c1_1_Full: 16.0 MiB → 4.00 MiB (25.0%), 1.0 s, 16.0 MiB/s\n');
    p.close();
  });

  it('lines: one line per task and nothing in between; on a terminal each first clears the line', () => {
    vi.useFakeTimers();
    for (const clearFirst of [false, true]) {
      const { p, out, advance } = fake('lines', { clearFirst });
      const a = p.start('c1_1 rootfs');
      for (let i = 0; i < 100; i++) {
        a.add(MiB);
        advance(100);
        vi.advanceTimersByTime(100);
      }
      expect(out).toEqual([]);
      const b = p.start('c1_1 home'); // starting the next task finishes the running one
      expect(out).toEqual([`${clearFirst ? '\r\x1b[K' : ''}sbk-send: c1_1 rootfs: 100 MiB, 10.0 s, 10.0 MiB/s\n`]);
      b.add(KiB);
      advance(1_000);
      p.finish(b);
      p.finish(b); // twice is once
      expect(out.length).toBe(2);
      expect(out[1]).toMatch(/sbk-send: c1_1 home: 1\.00 KiB, 1\.0 s, 1\.00 KiB\/s\n$/);
      p.close();
      expect(out.length).toBe(2);
    }
  });

  it('off: writes nothing, starts no timer', () => {
    vi.useFakeTimers();
    const { p, out, advance } = fake('off');
    expect(p.enabled).toBe(false);
    const m = p.start('x');
    m.add(1);
    advance(10_000);
    vi.advanceTimersByTime(10_000);
    p.finish(m);
    p.close();
    expect(out).toEqual([]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('draw on the real stderr: other messages first clear the status line; close restores stderr', () => {
    vi.useFakeTimers();
    const written: string[] = [];
    const original = process.stderr.write;
    // Stand-in for the terminal, installed before Progress wraps stderr.write.
    process.stderr.write = ((s: string) => {
      written.push(String(s));
      return true;
    }) as typeof process.stderr.write;
    try {
      let now = 0;
      const p = new Progress({ prog: 'sbk-unpack', mode: 'draw', now: () => now, columns: () => 200 });
      const m = p.start('c1_1 rootfs');
      m.add(MiB);
      now = 300;
      vi.advanceTimersByTime(300);
      expect(written.at(-1)).toMatch(/^\r\x1b\[Ksbk-unpack: c1_1 rootfs {2}1\.00 MiB/);
      process.stderr.write('sbk-unpack: warning: something\n');
      expect(written.slice(-2)).toEqual(['\r\x1b[K', 'sbk-unpack: warning: something\n']);
      // The line is drawn again on the next tick, below the message.
      now = 600;
      vi.advanceTimersByTime(300);
      expect(written.at(-1)).toMatch(/^\r\x1b\[Ksbk-unpack: c1_1 rootfs/);
      p.close();
      expect(written.at(-1)).toBe('\r\x1b[K');
      const n = written.length;
      process.stderr.write('after\n');
      expect(written.slice(n)).toEqual(['after\n']); // no more clearing
    } finally {
      process.stderr.write = original;
    }
  });
});

describe('SendSizeEstimator', () => {
  /** A command: le32 length, le16 type, le32 crc (not checked here), TLVs. */
  const cmd = (type: number, tlvs: [number, Buffer][]) => {
    const body = Buffer.concat(
      tlvs.map(([t, v]) => {
        const h = Buffer.alloc(4);
        h.writeUInt16LE(t, 0);
        h.writeUInt16LE(v.length, 2);
        return Buffer.concat([h, v]);
      }),
    );
    const h = Buffer.alloc(10);
    h.writeUInt32LE(body.length, 0);
    h.writeUInt16LE(type, 4);
    return Buffer.concat([h, body]);
  };
  const u64 = (n: number) => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(BigInt(n));
    return b;
  };

  it('adds the data and WRITE headers an UPDATE_EXTENT stands for, whatever the chunking', () => {
    const header = Buffer.concat([Buffer.from('btrfs-stream\0'), Buffer.from([1, 0, 0, 0])]);
    const mkfile = cmd(3, [[15, Buffer.from('o257-5-0')]]);
    const path = Buffer.from('usr/lib/libfoo.so');
    const update = cmd(22, [
      [15, path],
      [18, u64(0)],
      [4, u64(100 * 1024)], // 100 KiB: three WRITEs of at most 48 KiB
    ]);
    const end = cmd(21, []);
    const stream = Buffer.concat([header, mkfile, update, end]);
    const expected = stream.length - update.length + 100 * 1024 + 3 * (10 + 4 + path.length + 12 + 4);
    for (const step of [1, 7, 64, stream.length]) {
      const e = new SendSizeEstimator();
      for (let i = 0; i < stream.length; i += step) e.write(stream.subarray(i, i + step));
      expect(e.estimate()).toBe(expected);
    }
  });
});
