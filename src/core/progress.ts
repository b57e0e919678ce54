// Progress on stderr for the long stages (sbk-send, sbk-pack, sbk-unpack).
//
// Modes (see chooseProgressMode and sbk(7), PERFORMANCE):
//   draw   one status line, redrawn in place at most 4 times a second, then a summary line per
//          task (volume, archive). Only on a terminal, and only in the last stage of a pipe (its
//          stdout is not a pipe), so stages sharing a terminal never draw over each other.
//   lines  one summary line per task, nothing in between: stderr is a file, or another stage
//          of the pipe draws (on a terminal the line first clears the other stage's status line).
//   off    nothing: -q, --no-progress, or neither a terminal nor --progress.
// Counting is an addition per chunk; all formatting and writing happens on a timer, so the
// cost does not depend on the data rate.
import { fstatSync } from 'node:fs';

export type ProgressMode = 'off' | 'draw' | 'lines';

/**
 * How every stage tells of its progress: a task (a volume's stream, an archive) starts, its
 * bytes pass (per chunk: keep it cheap), it ends. The stage calls these; the CLI turns them into
 * meters. `Task` says what the stage knows of the task when it starts.
 */
export interface ProgressHooks<Task> {
  start(task: Task): void;
  add(n: number): void;
  end(): void;
}

export interface ModeInputs {
  /** --progress (true), --no-progress (false), neither (undefined). */
  flag: boolean | undefined;
  /** -q */
  quiet: boolean;
  stderrIsTTY: boolean;
  /** The last stage of the pipe: stdout is not a pipe or socket (a terminal, a file, nothing). */
  last: boolean;
}

export function chooseProgressMode(i: ModeInputs): ProgressMode {
  if (i.quiet || i.flag === false) return 'off';
  if (i.stderrIsTTY && i.last) return 'draw';
  return i.flag ? 'lines' : 'off';
}

/** True when stdout goes into a pipe or socket, i.e. another stage reads it. */
export function stdoutIsPipe(): boolean {
  try {
    const st = fstatSync(1);
    return st.isFIFO() || st.isSocket();
  } catch {
    return false;
  }
}

// ---- formatting ------------------------------------------------------------------------------
const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** 0 B, 999 B, 1.0 KiB, 12.3 MiB, 1.21 GiB, 123 GiB: three significant digits from KiB on. */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n) || n < 0) return '?';
  if (n < 1024) return `${Math.round(n)} B`;
  let u = 0;
  let v = n;
  while (v >= 1024 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  // Rounding may reach 1024 (1023.96 KiB): show it in the next unit instead.
  if (v >= 999.5 && u < UNITS.length - 1) {
    v /= 1024;
    u++;
  }
  const digits = v >= 100 ? 0 : v >= 10 ? 1 : 2;
  return `${v.toFixed(digits)} ${UNITS[u]}`;
}

export function formatRate(bytesPerSecond: number): string {
  return Number.isFinite(bytesPerSecond) ? `${formatBytes(bytesPerSecond)}/s` : '–';
}

/** m:ss, or h:mm:ss from an hour on. */
export function formatDuration(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

/** Seconds with one decimal below a minute, else m:ss. */
function formatSeconds(ms: number): string {
  return ms < 60_000 ? `${(ms / 1000).toFixed(1)} s` : formatDuration(ms);
}

const percent = (part: number, whole: number) => (whole > 0 ? `${((100 * part) / whole).toFixed(1)}%` : '–');

// ---- meters ----------------------------------------------------------------------------------
/** One task being measured: a volume's send stream, an archive. */
export class Meter {
  /** Bytes read or passed on. */
  bytes = 0;
  /** Bytes written, where that differs (compressed output). */
  out: number | undefined;
  /** The expected number of bytes, when known. */
  total: number | undefined;
  /** The total is an estimate (shown with ~). */
  estimate = false;
  /** More to show after the numbers (e.g. how far through the archive file). */
  extra: (() => string | undefined) | undefined;
  /** Called before the meter is shown: lets a meter read counters instead of being fed. */
  sample: (() => void) | undefined;
  done = false;

  constructor(
    readonly label: string,
    readonly started: number,
  ) {}

  add(n: number): void {
    this.bytes += n;
  }
}

/** The status line of a running task. */
export function statusText(prog: string, m: Meter, now: number): string {
  const elapsed = now - m.started;
  const rate = elapsed > 0 ? (m.bytes * 1000) / elapsed : NaN;
  const parts = [`${prog}: ${m.label}`];
  let amount = formatBytes(m.bytes);
  if (m.total !== undefined && m.total > 0) {
    amount += ` / ${m.estimate ? '~' : ''}${formatBytes(m.total)} (${Math.min(100, Math.floor((100 * m.bytes) / m.total))}%)`;
  }
  if (m.out !== undefined) amount += ` → ${formatBytes(m.out)} (${percent(m.out, m.bytes)})`;
  parts.push(amount, formatRate(rate), formatDuration(elapsed));
  if (m.total !== undefined && m.total > m.bytes && rate > 0) parts.push(`ETA ${formatDuration(((m.total - m.bytes) / rate) * 1000)}`);
  const extra = m.extra?.();
  if (extra) parts.push(extra);
  return parts.join('  ');
}

/** The line left when a task is done. */
export function summaryText(prog: string, m: Meter, now: number): string {
  const elapsed = now - m.started;
  const rate = elapsed > 0 ? (m.bytes * 1000) / elapsed : NaN;
  const amount = m.out !== undefined ? `${formatBytes(m.bytes)} → ${formatBytes(m.out)} (${percent(m.out, m.bytes)})` : formatBytes(m.bytes);
  return `${prog}: ${m.label}: ${amount}, ${formatSeconds(elapsed)}, ${formatRate(rate)}`;
}

// ---- the reporter ----------------------------------------------------------------------------
export interface ProgressOptions {
  /** The binary's name, the prefix of every line. */
  prog: string;
  mode: ProgressMode;
  /** Where lines go (default: stderr, whose other writes then clear the status line first). */
  write?: (s: string) => void;
  /** Clock in ms (default performance.now). */
  now?: () => number;
  /** Least time between two redraws (default 250 ms: at most 4 a second). */
  intervalMs?: number;
  /** Terminal width, to keep the status line on one row (default: stderr's columns). */
  columns?: () => number | undefined;
  /** For `lines` on a terminal: clear another stage's status line before each line. */
  clearFirst?: boolean;
}

const CLEAR_LINE = '\r\x1b[K';

export class Progress {
  readonly mode: ProgressMode;
  private readonly prog: string;
  private readonly write: (s: string) => void;
  private readonly now: () => number;
  private readonly interval: number;
  private readonly columns: () => number | undefined;
  private readonly clearFirst: boolean;
  private current: Meter | undefined;
  private timer: ReturnType<typeof setInterval> | undefined;
  /** A status line is on the screen (the cursor is at its end). */
  private shown = false;
  private lastDraw = -Infinity;
  private restoreStderr: (() => void) | undefined;
  /** Redraws so far, and the time spent drawing and summing up (for tests and the benchmark). */
  draws = 0;
  spentMs = 0;

  constructor(opts: ProgressOptions) {
    this.mode = opts.mode;
    this.prog = opts.prog;
    this.now = opts.now ?? (() => performance.now());
    this.interval = opts.intervalMs ?? 250;
    this.columns = opts.columns ?? (() => process.stderr.columns);
    this.clearFirst = opts.clearFirst ?? false;
    if (opts.write) {
      this.write = opts.write;
    } else {
      const stderr = process.stderr;
      const original = stderr.write;
      const raw = (s: string) => void original.call(stderr, s);
      this.write = raw;
      if (this.mode === 'draw') {
        // Anything else written to stderr (a warning, an error) first clears the status line,
        // which the next tick draws again below it.
        const self = this;
        stderr.write = function (this: typeof stderr, ...args: unknown[]) {
          if (self.shown) {
            self.shown = false;
            raw(CLEAR_LINE);
          }
          return (original as (...a: unknown[]) => boolean).apply(this, args);
        } as typeof stderr.write;
        this.restoreStderr = () => {
          stderr.write = original;
        };
      }
    }
  }

  get enabled(): boolean {
    return this.mode !== 'off';
  }

  /** Starts measuring a task; a task still running is finished first. */
  start(label: string): Meter {
    if (this.current && !this.current.done) this.finish(this.current);
    const m = new Meter(label, this.now());
    this.current = m;
    if (this.mode === 'draw' && !this.timer) {
      this.timer = setInterval(() => this.tick(), this.interval);
      this.timer.unref?.();
    }
    return m;
  }

  /** Ends a task: its summary line stays (draw and lines modes). */
  finish(m: Meter): void {
    if (m.done) return;
    const t0 = performance.now();
    m.done = true;
    m.sample?.();
    if (this.mode === 'off') return;
    const text = summaryText(this.prog, m, this.now());
    if (this.mode === 'draw') {
      this.write(`${CLEAR_LINE}${text}\n`);
      this.shown = false;
    } else {
      this.write(`${this.clearFirst ? CLEAR_LINE : ''}${text}\n`);
    }
    if (this.current === m) this.current = undefined;
    this.spentMs += performance.now() - t0;
  }

  /** Redraws the status line if it is time (called by the timer; public for tests). */
  tick(): void {
    const m = this.current;
    if (this.mode !== 'draw' || !m || m.done) return;
    const t0 = performance.now();
    const now = this.now();
    if (now - this.lastDraw < this.interval * 0.9) return;
    this.lastDraw = now;
    m.sample?.();
    let text = statusText(this.prog, m, now);
    const cols = this.columns();
    // A line longer than the terminal wraps, and \r would then only go back to its last row.
    if (cols && cols > 10 && text.length > cols - 1) text = text.slice(0, cols - 2) + '…';
    this.write(`${CLEAR_LINE}${text}`);
    this.shown = true;
    this.draws++;
    this.spentMs += performance.now() - t0;
  }

  /** Stops drawing; clears a status line left on the screen. Safe to call more than once. */
  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    if (this.shown) this.write(CLEAR_LINE);
    this.shown = false;
    this.restoreStderr?.();
    this.restoreStderr = undefined;
  }
}
