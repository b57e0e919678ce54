// Reading a compressed stream member by member (sbk-pack --store, sbk-unpack of a stream): the
// input pulled chunk by chunk, with room to push back what belongs to the next member, so that
// each codec's member reader takes exactly its own bytes and leaves the rest to the next one.
import type { Readable } from 'node:stream';

/** Pulls the input chunk by chunk, with room to push back what belongs to the next member. */
export class ByteReader {
  private readonly it: AsyncIterator<Buffer>;
  private pending: Buffer[] = [];
  /** Bytes handed out so far (for messages). */
  offset = 0;
  constructor(private readonly stream: Readable) {
    this.it = (stream as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
  }
  async next(): Promise<Buffer | undefined> {
    let b = this.pending.shift();
    if (!b) {
      const r = await this.it.next();
      if (r.done) return undefined;
      b = typeof r.value === 'string' ? Buffer.from(r.value) : r.value;
    }
    this.offset += b.length;
    return b;
  }
  unshift(b: Buffer): void {
    if (b.length === 0) return;
    this.offset -= b.length;
    this.pending.unshift(b);
  }
  /** Exactly n bytes, or fewer at the end of the input. */
  async read(n: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    let have = 0;
    while (have < n) {
      const b = await this.next();
      if (!b) break;
      const take = Math.min(n - have, b.length);
      parts.push(b.subarray(0, take));
      this.unshift(b.subarray(take));
      have += take;
    }
    return Buffer.concat(parts);
  }
  /** The next n bytes (fewer at the end of the input), left to be read again. */
  async peek(n: number): Promise<Buffer> {
    const b = await this.read(n);
    this.unshift(b);
    return b;
  }
  /** Up to and including the next zero byte (a gzip FNAME/FCOMMENT field). */
  async readZeroTerminated(limit: number): Promise<Buffer | undefined> {
    const parts: Buffer[] = [];
    let have = 0;
    for (;;) {
      const b = await this.next();
      if (!b) return undefined;
      const z = b.indexOf(0);
      if (z >= 0) {
        parts.push(b.subarray(0, z + 1));
        this.unshift(b.subarray(z + 1));
        return Buffer.concat(parts);
      }
      parts.push(b);
      have += b.length;
      if (have > limit) return undefined;
    }
  }
  destroy(): void {
    this.stream.destroy();
  }
}
