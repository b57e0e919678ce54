// What the property-based fuzz tests share: a hang guard, the rule that every failure is an
// SbkError of an allowed exit code on one line, chunking as a pipe delivers bytes, and edits at
// any place inside a JSON value (for manifests, trailers and records damaged field by field).
import { SbkError } from '../../src/core/errors.js';

export const HANG_MS = 5000;

/** Fails (with a plain Error, so the property fails) when `p` does not settle in time. */
export async function guarded<T>(p: Promise<T>, what: string, ms = HANG_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`hang: ${what} did not settle within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([p, hang]);
  } finally {
    clearTimeout(timer);
  }
}

export type Outcome<T> = { ok: true; value: T } | { ok: false; err: SbkError };

/**
 * A `settle(what, fn, codes = defaults)`: runs `fn`; an SbkError of an allowed exit code (one
 * line of message) is an outcome, anything else fails the property.
 */
export function settler(defaults: number[]) {
  return async <T>(what: string, fn: () => Promise<T>, codes: number[] = defaults): Promise<Outcome<T>> => {
    try {
      return { ok: true, value: await guarded(fn(), what) };
    } catch (err) {
      if (!(err instanceof SbkError)) throw new Error(`${what}: not an SbkError: ${(err as Error)?.stack ?? String(err)}`);
      if (!codes.includes(err.exitCode)) throw new Error(`${what}: exit code ${err.exitCode} (${err.message})`);
      if (/[\n\r]/.test(err.message)) throw new Error(`${what}: a message of several lines: ${JSON.stringify(err.message)}`);
      return { ok: false, err };
    }
  };
}

/** Splits a buffer into chunks of the given sizes (cycled), as a pipe would deliver it. */
export function chunked(buf: Buffer, sizes: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0, i = 0; at < buf.length; i++) {
    const n = Math.max(1, sizes[i % sizes.length]!);
    out.push(buf.subarray(at, at + n));
    at += n;
  }
  return out;
}

export type JsonPath = (string | number)[];

/** Every path to a value inside a JSON value (objects and arrays), the root included. */
export function jsonPaths(v: unknown, at: JsonPath = []): JsonPath[] {
  const out: JsonPath[] = [at];
  if (Array.isArray(v)) v.forEach((x, i) => out.push(...jsonPaths(x, [...at, i])));
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) out.push(...jsonPaths(x, [...at, k]));
  return out;
}

export type JsonEdit = { op: 'set' | 'delete' | 'add'; pick: number; value: unknown; key: string };

/**
 * Applies one edit to a copy of a JSON value at the path chosen by `pick`. An added key is
 * defined as an own property, so that a key such as `__proto__` is written out like any other.
 */
export function editJson(v: unknown, m: JsonEdit): unknown {
  const root = { v: structuredClone(v) } as Record<string, unknown>;
  const all = jsonPaths(root.v).map((p) => ['v', ...p]);
  const p = all[m.pick % all.length]!;
  const parent = p.slice(0, -1).reduce<any>((o, k) => o[k], root);
  const last = p.at(-1)!;
  if (m.op === 'set') parent[last] = m.value;
  else if (m.op === 'delete') {
    if (Array.isArray(parent)) parent.splice(Number(last), 1);
    else delete parent[last];
  } else {
    const target = parent[last];
    if (Array.isArray(target)) target.push(m.value);
    else if (target && typeof target === 'object') Object.defineProperty(target, m.key, { value: m.value, enumerable: true, writable: true, configurable: true });
    else parent[last] = m.value;
  }
  return root.v;
}
