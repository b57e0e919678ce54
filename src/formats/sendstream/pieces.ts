// A send-stream command's body read in place from the input chunks it lies in, for the parser
// (reader.ts): values are read without a Buffer of their own unless they straddle two chunks.
/**
 * A command body that may lie in several input chunks (piece k: bufs[k] from starts[k] to
 * ends[k]), read in order. Nothing is allocated per command: a value read with `take` is at
 * `buf` from `at`, in the input chunk itself, or copied into a scratch buffer when it straddles
 * two chunks (then valid until the next take).
 */
export class Pieces {
  private readonly bufs: Buffer[] = [];
  private readonly starts: number[] = [];
  private readonly ends: number[] = [];
  /** Pieces in use: bufs[0..n). */
  private n = 0;
  private i = 0;
  private pos = 0;
  private scratch = Buffer.alloc(64);
  buf: Buffer = this.scratch;
  at = 0;

  add(b: Buffer, start: number, end: number): void {
    const k = this.n++;
    this.bufs[k] = b;
    this.starts[k] = start;
    this.ends[k] = end;
  }

  /** Forgets the pieces; past a few, lets go of the caller's chunks they point into. */
  clear(): void {
    if (this.n > 4) this.bufs.length = this.starts.length = this.ends.length = 0;
    this.n = 0;
  }

  /** Back to the first byte of the body. */
  rewind(): void {
    this.i = 0;
    this.pos = this.n ? this.starts[0]! : 0;
  }

  take(n: number): void {
    const cur = this.bufs[this.i];
    if (this.i < this.n && this.ends[this.i]! - this.pos >= n) {
      this.buf = cur!;
      this.at = this.pos;
      this.advance(n);
      return;
    }
    if (this.scratch.length < n) this.scratch = Buffer.allocUnsafe(Math.max(n, 2 * this.scratch.length));
    this.copyTo(this.scratch, n);
    this.buf = this.scratch;
    this.at = 0;
  }

  /** The next n bytes in a buffer of their own (file data the caller keeps). */
  takeCopy(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    this.copyTo(out, n);
    return out;
  }

  u16(): number {
    this.take(2);
    return this.buf.readUInt16LE(this.at);
  }

  skip(n: number): void {
    while (n > 0) n -= this.advance(Math.min(n, this.ends[this.i]! - this.pos));
  }

  private copyTo(out: Buffer, n: number): void {
    for (let filled = 0; filled < n; ) {
      const k = Math.min(n - filled, this.ends[this.i]! - this.pos);
      this.bufs[this.i]!.copy(out, filled, this.pos, this.pos + k);
      filled += this.advance(k);
    }
  }

  private advance(k: number): number {
    this.pos += k;
    if (this.pos === this.ends[this.i]) {
      this.i++;
      this.pos = this.i < this.n ? this.starts[this.i]! : 0;
    }
    return k;
  }
}
