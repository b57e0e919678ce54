// The bench container's content, shared by bench/run.js and bench/zstd.mjs: the volumes, how many
// MiB of file data each gets (--quick: less), and the directories of this machine it is copied
// from (first sources first), so that both benches measure the same kind of data; and the copy.
import { existsSync } from 'node:fs';
import { copyFile, lstat, mkdir, readdir, readlink, symlink } from 'node:fs/promises';
import path from 'node:path';
export const VOLUMES = ['rootfs', 'home', 'opt', 'var'];
export const budget = (quick) => (quick ? { rootfs: 160, home: 50, opt: 30, var: 30 } : { rootfs: 500, home: 200, opt: 120, var: 120 });
export const SOURCES = {
  rootfs: ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib/python3', '/usr/lib'],
  home: ['/usr/share/doc', '/usr/share/man', '/usr/share'],
  opt: ['/usr/lib/gcc', '/usr/lib/jvm', '/usr/local', '/usr/lib'],
  var: ['/usr/share/locale', '/usr/share/perl', '/usr/share', '/usr/lib'],
};

/** Copies files from `sources` (in sorted order, each file once) into `dst` until `budget` bytes. */
export async function copyBudget(sources, dst, budget, seen) {
  let copied = 0;
  let files = 0;
  const queue = [];
  const flush = async () => {
    await Promise.all(queue.splice(0));
  };
  const walk = async (src) => {
    if (copied >= budget) return;
    let st;
    try {
      st = await lstat(src);
    } catch {
      return;
    }
    const key = `${st.dev}:${st.ino}`;
    if (seen.has(key)) return;
    seen.add(key);
    const rel = path.relative('/usr', src);
    const to = path.join(dst, rel);
    if (st.isDirectory()) {
      await mkdir(to, { recursive: true });
      let names;
      try {
        names = (await readdir(src)).sort();
      } catch {
        return;
      }
      for (const n of names) {
        if (copied >= budget) break;
        await walk(path.join(src, n));
      }
    } else if (st.isSymbolicLink()) {
      try {
        await symlink(await readlink(src), to);
      } catch {
        /* exists */
      }
    } else if (st.isFile()) {
      if (copied + st.size > budget * 1.02) return; // a smaller file may still fit
      copied += st.size;
      files++;
      queue.push(copyFile(src, to).catch(() => {}));
      if (queue.length >= 16) await flush();
    }
  };
  for (const s of sources) {
    if (copied >= budget) break;
    if (existsSync(s)) await walk(s);
  }
  await flush();
  return { bytes: copied, files };
}
