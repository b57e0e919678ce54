// The archive writer's framing of a long send stream (sbk-send): while a part is written to a
// slow reader, a bounded amount of the next one is read ahead (the send keeps flowing, memory
// stays at one part plus the read-ahead), and the parts come out in order, each with its digest.
import { randomBytes, createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { describe, it, expect } from 'vitest';
import { ArchiveWriter, DEFAULT_PART_SIZE, manifestFromRecord, readArchives } from '../../src/formats/archive/archive.js';
import { RECORD_FORMAT, type BackupRecord } from '../../src/formats/record.js';

const MiB = 1024 * 1024;
const T0 = 1477297700;

function record(): BackupRecord {
  const set = `/b/c1/${T0}_Full`;
  return {
    sbk: 'backup',
    format: RECORD_FORMAT,
    container: 'c1',
    time: T0,
    full: true,
    name: `c1_${T0}_Full`,
    set,
    containerDir: '/l/c1',
    parent: null,
    previous: null,
    volumes: [{ name: 'rootfs', mount: '/', source: '/l/c1/rootfs', snapshot: `${set}/rootfs`, uuid: '00000000-0000-4000-8000-000000000001', parentUuid: null }],
  };
}

describe('ArchiveWriter.addDelta', () => {
  it('reads ahead a bounded amount while a part is written to a slow reader, and frames the stream whole', async () => {
    const data = randomBytes(2 * DEFAULT_PART_SIZE + 3 * MiB + 12345);
    let pulled = 0;
    async function* source() {
      for (let o = 0; o < data.length; o += 64 * 1024) {
        const c = data.subarray(o, o + 64 * 1024);
        pulled += c.length;
        yield c;
      }
    }
    const pack = tar.pack();
    const out: Buffer[] = [];
    let consumed = 0;
    let maxAhead = 0;
    const reading = (async () => {
      for await (const c of pack as AsyncIterable<Buffer>) {
        out.push(c);
        consumed += c.length;
        maxAhead = Math.max(maxAhead, pulled - consumed);
        // A slow reader (sbk-pack compressing, ssh): a pause every 256 KiB.
        if (consumed % (256 * 1024) < c.length) await new Promise((r) => setTimeout(r, 1));
      }
    })();
    const w = new ArchiveWriter(pack, manifestFromRecord(record(), { tool: 'sbk test', host: 'h', meta: [], changelog: false }));
    await w.start();
    await w.addDelta('rootfs', source());
    const trailer = await w.finish();
    pack.finalize();
    await reading;

    // The next part is read while one is written (more than a part ahead), but never much more
    // than one part and the 4 MiB read-ahead.
    expect(maxAhead).toBeGreaterThan(DEFAULT_PART_SIZE + 256 * 1024);
    expect(maxAhead).toBeLessThanOrEqual(DEFAULT_PART_SIZE + 4 * MiB + 1 * MiB);

    // Format 2: the whole delta's sha256 is of its parts' digests, in order.
    const sha = (b: Buffer) => createHash('sha256').update(b).digest();
    const partDigests = [0, 1, 2].map((i) => sha(data.subarray(i * DEFAULT_PART_SIZE, (i + 1) * DEFAULT_PART_SIZE)));
    expect(trailer.volumes.rootfs).toEqual({ size: data.length, sha256: sha(Buffer.concat(partDigests)).toString('hex'), parts: 3 });
    const names: string[] = [];
    const got: Buffer[] = [];
    for await (const e of readArchives(Readable.from(out))) {
      names.push(e.name);
      if (e.role === 'delta') for await (const c of e.body) got.push(c);
    }
    expect(names).toEqual(['manifest.json', 'rootfs.delta.000000', 'rootfs.delta.000001', 'rootfs.delta.000002', 'trailer.json']);
    expect(Buffer.concat(got).equals(data)).toBe(true);
  });

  it('a failing stream fails the framing, after the part being written is done', async () => {
    async function* source() {
      yield randomBytes(DEFAULT_PART_SIZE + 1000); // a whole part goes out, then the send fails
      throw new Error('btrfs send failed');
    }
    const pack = tar.pack();
    const reading = (async () => {
      for await (const _ of pack as AsyncIterable<Buffer>) void _;
    })();
    const w = new ArchiveWriter(pack, manifestFromRecord(record(), { tool: 'sbk test', host: 'h', meta: [], changelog: false }));
    await w.start();
    await expect(w.addDelta('rootfs', source())).rejects.toThrow('btrfs send failed');
    pack.destroy();
    await reading.catch(() => {});
  });
});
