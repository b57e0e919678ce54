// `--help` without loading yargs. Importing yargs (about forty ES modules, cliui, string-width
// with its Intl.Segmenter) costs more than node's own start-up, and `--help` should answer at
// once. The options a binary declares are recorded through a stand-in for the yargs builder and
// laid out exactly as yargs 18 lays them out (its help(), cliui and wrap-ansi, for plain ASCII
// text); test/unit/help.test.ts compares both outputs for every binary. Anything this does not
// know (commands, groups, examples, choices, non-ASCII text …) makes it give up, and yargs
// renders the help as before.

/** What an option declaration may hold for the fast path; anything else falls back to yargs. */
export interface OptionSpec {
  alias?: string | string[];
  type?: 'string' | 'boolean' | 'number';
  describe?: string;
  default?: unknown;
  hidden?: boolean;
  array?: boolean;
  choices?: readonly unknown[];
  /** No effect on the help text. */
  nargs?: number;
}

/** The builder methods that do not change the help text. */
const NO_HELP_EFFECT = new Set(['conflicts', 'check', 'implies', 'strict', 'strictOptions', 'fail']);
const KNOWN_KEYS = new Set(['alias', 'type', 'describe', 'default', 'hidden', 'array', 'choices', 'nargs']);

export interface Recorded {
  options: [string, OptionSpec][];
  /** A builder call or an option setting the fast path does not render. */
  unsupported?: string;
}

/** Runs a binary's `options` declaration against a recorder instead of yargs. */
export function recordOptions(declare: (y: never) => unknown): Recorded {
  const rec: Recorded = { options: [] };
  const proxy: unknown = new Proxy(
    {},
    {
      get(_t, prop) {
        if (prop === 'option')
          return (key: string, spec: OptionSpec = {}) => {
            for (const k of Object.keys(spec)) if (!KNOWN_KEYS.has(k)) rec.unsupported ??= `option setting ${k}`;
            if (spec.type !== undefined && !['string', 'boolean', 'number'].includes(spec.type)) rec.unsupported ??= `type ${spec.type}`;
            rec.options.push([key, spec]);
            return proxy;
          };
        if (typeof prop === 'string' && NO_HELP_EFFECT.has(prop)) return () => proxy;
        return () => {
          rec.unsupported ??= `.${String(prop)}()`;
          return proxy;
        };
      },
    },
  );
  declare(proxy as never);
  return rec;
}

// ---- wrap-ansi 9 (hard wrap, trimmed), for text without escapes and of width 1 per char ------
function wrapLine(line: string, columns: number): string {
  if (line.trim() === '') return '';
  const words = line.split(' ');
  let rows = [''];
  const wrapWord = (word: string) => {
    let visible = rows.at(-1)!.length;
    for (let i = 0; i < word.length; i++) {
      if (visible + 1 <= columns) rows[rows.length - 1] += word[i];
      else {
        rows.push(word[i]!);
        visible = 0;
      }
      visible += 1;
      if (visible === columns && i < word.length - 1) {
        rows.push('');
        visible = 0;
      }
    }
    if (!visible && rows.at(-1)!.length > 0 && rows.length > 1) rows[rows.length - 2] += rows.pop();
  };
  words.forEach((word, index) => {
    rows[rows.length - 1] = rows.at(-1)!.trimStart();
    let rowLength = rows.at(-1)!.length;
    if (index !== 0 && rowLength > 0) {
      rows[rows.length - 1] += ' ';
      rowLength++;
    }
    if (word.length > columns) {
      const remaining = columns - rowLength;
      const breaksThisLine = 1 + Math.floor((word.length - remaining - 1) / columns);
      const breaksNextLine = Math.floor((word.length - 1) / columns);
      if (breaksNextLine < breaksThisLine) rows.push('');
      wrapWord(word);
      return;
    }
    if (rowLength + word.length > columns && rowLength > 0 && word.length > 0) rows.push('');
    rows[rows.length - 1] += word;
  });
  rows = rows.map((row) => {
    const ws = row.split(' ');
    let last = ws.length;
    while (last > 0 && ws[last - 1]!.length === 0) last--;
    return last === ws.length ? row : ws.slice(0, last).join(' ') + ws.slice(last).join('');
  });
  return rows.join('\n');
}

const wrap = (text: string, columns: number) =>
  text
    .replaceAll('\r\n', '\n')
    .split('\n')
    .map((l) => wrapLine(l, columns))
    .join('\n');

// ---- cliui 9 (wrap on) ------------------------------------------------------------------------
interface Col {
  text: string;
  padding?: [number, number, number, number];
  width?: number;
  align?: 'right';
}
type Row = Col[] & { span?: boolean };

class Ui {
  readonly rows: Row[] = [];
  constructor(private readonly width: number) {}

  div(...args: (string | Col)[]): Row {
    if (args.length === 0) return this.div('');
    if (args.length === 1 && typeof args[0] === 'string' && /[\t\n]/.test(args[0])) return this.layoutDsl(args[0]);
    const cols = args.map((a) => (typeof a === 'string' ? this.colFromString(a) : a)) as Row;
    this.rows.push(cols);
    return cols;
  }

  span(...args: (string | Col)[]): void {
    this.div(...args).span = true;
  }

  private layoutDsl(str: string): Row {
    const rows = str.split('\n').map((r) => r.split('\t'));
    let left = 0;
    for (const cols of rows) if (cols.length > 1 && cols[0]!.length > left) left = Math.min(Math.floor(this.width * 0.5), cols[0]!.length);
    for (const cols of rows)
      this.div(...cols.map((r, i) => ({ text: r.trim(), padding: measurePadding(r), width: i === 0 && cols.length > 1 ? left : undefined })));
    return this.rows.at(-1)!;
  }

  private colFromString(text: string): Col {
    return { text, padding: measurePadding(text) };
  }

  toString(): string {
    const lines: { text: string; span?: boolean; hidden?: boolean }[] = [];
    for (const row of this.rows) this.rowToString(row, lines);
    return lines
      .filter((l) => !l.hidden)
      .map((l) => l.text)
      .join('\n');
  }

  private rowToString(row: Row, lines: { text: string; span?: boolean; hidden?: boolean }[]): void {
    this.rasterize(row).forEach((rrow, r) => {
      let str = '';
      rrow.forEach((col, c) => {
        const spec = row[c]!;
        const { width } = spec;
        const wrapWidth = negatePadding(spec);
        let ts = col;
        if (wrapWidth > col.length) ts += ' '.repeat(wrapWidth - col.length);
        if (spec.align === 'right') {
          const t = ts.trim();
          ts = t.length < wrapWidth ? ' '.repeat(wrapWidth - t.length) + t : t;
          if (ts.length < wrapWidth) ts += ' '.repeat((width || 0) - ts.length - 1);
        }
        const padding = spec.padding ?? [0, 0, 0, 0];
        if (padding[3]) str += ' '.repeat(padding[3]);
        str += ts;
        if (padding[1]) str += ' '.repeat(padding[1]);
        if (r === 0 && lines.length > 0) str = renderInline(str, lines[lines.length - 1]!);
      });
      lines.push({ text: str.replace(/ +$/, ''), span: row.span });
    });
  }

  private rasterize(row: Row): string[][] {
    const rrows: string[][] = [];
    const widths = this.columnWidths(row);
    row.forEach((col, c) => {
      col.width = widths[c];
      const wrapped = wrap(col.text, negatePadding(col)).split('\n');
      if (col.padding) {
        wrapped.unshift(...new Array<string>(col.padding[0] || 0).fill(''));
        wrapped.push(...new Array<string>(col.padding[2] || 0).fill(''));
      }
      wrapped.forEach((str, r) => {
        if (!rrows[r]) rrows.push([]);
        const rrow = rrows[r]!;
        for (let i = 0; i < c; i++) if (rrow[i] === undefined) rrow.push('');
        rrow.push(str);
      });
    });
    return rrows;
  }

  private columnWidths(row: Row): number[] {
    let unset = row.length;
    let remaining = this.width;
    const widths = row.map((col) => {
      if (col.width) {
        unset--;
        remaining -= col.width;
        return col.width;
      }
      return undefined;
    });
    const unsetWidth = unset ? Math.floor(remaining / unset) : 0;
    return widths.map((w, i) => w ?? Math.max(unsetWidth, 1 + (row[i]!.padding?.[3] || 0) + (row[i]!.padding?.[1] || 0)));
  }
}

function measurePadding(str: string): [number, number, number, number] {
  return [0, /\s*$/.exec(str)![0].length, 0, /^\s*/.exec(str)![0].length];
}

function negatePadding(col: Col): number {
  let w = col.width || 0;
  if (col.padding) w -= (col.padding[3] || 0) + (col.padding[1] || 0);
  return w;
}

function renderInline(source: string, previous: { text: string; span?: boolean; hidden?: boolean }): string {
  const leading = /^ */.exec(source)![0].length;
  const target = previous.text;
  const targetWidth = target.trimEnd().length;
  if (!previous.span) return source;
  if (leading < targetWidth) return source;
  previous.hidden = true;
  return target.trimEnd() + ' '.repeat(leading - targetWidth) + source.trimStart();
}

// ---- yargs 18 usage.help() ----------------------------------------------------------------------
export interface HelpSpec {
  name: string;
  usage: string;
  epilog: string;
  width: number;
  /** In declaration order: the common options, version, help, then the binary's own. */
  options: [string, OptionSpec][];
}

/** The help text, or undefined when yargs has to render it (something this does not know). */
export function renderHelp(spec: HelpSpec): string | undefined {
  const ascii = /^[\x20-\x7e\n]*$/;
  const texts = [
    spec.usage,
    spec.epilog,
    ...spec.options.flatMap(([k, o]) => [k, o.describe ?? '', ...[o.alias ?? []].flat(), ...(o.choices ?? []).map((c) => JSON.stringify(c) ?? '')]),
  ];
  if (!texts.every((t) => ascii.test(t))) return undefined;
  const visible = spec.options.filter(([, o]) => !o.hidden && (o.describe !== undefined || o.default !== undefined));
  const ui = new Ui(spec.width);
  ui.div({ text: spec.usage.replace(/\$0/g, spec.name) });
  ui.div();
  type Sw = { text: string; indentation: number };
  const switches = new Map<string, Sw>();
  for (const [key, o] of visible) {
    const names = [key, ...[o.alias ?? []].flat()].map((sw) => (/^[0-9]$/.test(sw) ? (o.type === 'boolean' ? '-' : '--') : sw.length > 1 ? '--' : '-') + sw);
    const isLong = (s: string) => s.startsWith('--');
    names.sort((a, b) => (isLong(a) === isLong(b) ? 0 : isLong(a) ? 1 : -1));
    switches.set(key, { text: names.join(', '), indentation: 0 });
  }
  if ([...switches.values()].some((s) => !s.text.startsWith('--')))
    for (const s of switches.values()) if (s.text.startsWith('--')) s.indentation += 4;
  let maxWidth = 0;
  for (const s of switches.values()) maxWidth = Math.max(maxWidth, s.text.length + s.indentation);
  maxWidth = Math.min(maxWidth, Math.floor(spec.width * 0.5));
  if (visible.length) {
    ui.div('Options:');
    for (const [key, o] of visible) {
      const s = switches.get(key)!;
      // As yargs: of several type flags the last it checks wins (boolean, string, array, number).
      const type = o.type === 'number' ? 'number' : o.array ? 'array' : o.type;
      const choices = o.choices ? `[choices: ${o.choices.map((c) => JSON.stringify(c)).join(', ')}]` : null;
      const extra = [type ? `[${type}]` : null, choices, defaultString(o.default)].filter(Boolean).join(' ');
      ui.span({ text: s.text, padding: [0, 2, 0, 2 + s.indentation], width: maxWidth + 4 }, o.describe ?? '');
      if (extra) ui.div({ text: extra, padding: [0, 0, 0, 2], align: 'right' });
      else ui.div();
    }
    ui.div();
  }
  if (spec.epilog) ui.div(`${spec.epilog.replace(/\$0/g, spec.name)}\n`);
  return ui.toString().replace(/\s*$/, '');
}

function defaultString(value: unknown): string | null {
  if (value === undefined) return null;
  const v = typeof value === 'string' ? `"${value}"` : typeof value === 'object' ? JSON.stringify(value) : String(value);
  return `[default: ${v}]`;
}
