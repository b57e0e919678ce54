// A real OpenSSH server for the remote-storage tests: started on 127.0.0.1 on a random high port
// with a throwaway host key, user key and config in a temp dir; the client side gets an ssh
// config file (`ssh -F FILE sbk-test`). stop() kills it and deletes the dir; it is also killed
// if the test process exits without stopping it.
import { execa, type ResultPromise } from 'execa';
import { mkdtemp, mkdir, rm, writeFile, readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { ROOT, type Sandbox } from './sandbox.js';

export const SSHD = '/usr/sbin/sshd';

export interface Sshd {
  port: number;
  dir: string;
  /** The Host alias of the client config. */
  host: string;
  /** The client config file (HostName, Port, User, IdentityFile, no host key checking). */
  config: string;
  /** The ssh command the pipelines take from SBK_SSH. */
  sshCommand: string;
  /** stderr of sshd so far (it runs with -e). */
  log(): string;
  stop(): Promise<void>;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => {
      s.destroy();
      resolve(true);
    });
    s.on('error', () => resolve(false));
  });
}

/** Why sshd cannot run here, or undefined. */
export async function sshdUnavailable(): Promise<string | undefined> {
  if (!existsSync(SSHD)) return `${SSHD} is missing (apt-get install openssh-server)`;
  if (process.getuid?.() !== 0) return 'not root';
  // Without PAM, sshd refuses any login to an account whose password is locked with '!'.
  const shadow = await readFile('/etc/shadow', 'utf8').catch(() => '');
  const root = shadow.split('\n').find((l) => l.startsWith('root:'));
  if (root?.split(':')[1]?.startsWith('!')) return "root's password is locked ('!' in /etc/shadow): sshd without PAM refuses root logins";
  return undefined;
}

export async function startSshd(): Promise<Sshd> {
  const why = await sshdUnavailable();
  if (why) throw new Error(`cannot start the test sshd: ${why}`);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'sbk-sshd-'));
  let child: ResultPromise | undefined;
  let stderr = '';
  const kill = () => child?.kill('SIGKILL');
  const stop = async () => {
    process.off('exit', kill);
    if (child) {
      child.kill('SIGTERM');
      await child.catch(() => {});
      child = undefined;
    }
    await rm(dir, { recursive: true, force: true });
  };
  try {
    // sshd insists on its privilege-separation directory.
    await mkdir('/run/sshd', { recursive: true, mode: 0o755 });
    for (const k of ['host_key', 'id'])
      await execa('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', `sbk-test-${k}`, '-f', path.join(dir, k)], { stdin: 'ignore' });
    await writeFile(path.join(dir, 'authorized_keys'), await readFile(path.join(dir, 'id.pub')));
    for (let attempt = 0; attempt < 8; attempt++) {
      const port = 20_000 + Math.floor(Math.random() * 40_000);
      if (await canConnect(port)) continue;
      const config = path.join(dir, 'sshd_config');
      await writeFile(
        config,
        [
          `Port ${port}`,
          'ListenAddress 127.0.0.1',
          `HostKey ${path.join(dir, 'host_key')}`,
          `PidFile ${path.join(dir, 'sshd.pid')}`,
          `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
          'PermitRootLogin yes',
          'PubkeyAuthentication yes',
          'PasswordAuthentication no',
          'KbdInteractiveAuthentication no',
          'UsePAM no',
          'StrictModes no',
          'PrintMotd no',
          'LogLevel ERROR',
          // node (the sbk binaries' interpreter) must be found on the "remote" side.
          `SetEnv PATH=${path.dirname(process.execPath)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`,
          '',
        ].join('\n'),
      );
      stderr = '';
      child = execa(SSHD, ['-D', '-e', '-f', config], { stdin: 'ignore', reject: false, buffer: false });
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      process.once('exit', kill);
      let up = false;
      for (let i = 0; i < 100 && child.exitCode === null; i++) {
        if (await canConnect(port)) {
          up = true;
          break;
        }
        await sleep(50);
      }
      if (!up) {
        child.kill('SIGKILL');
        await child.catch(() => {});
        child = undefined;
        process.off('exit', kill);
        if (/Address already in use|Bind to port/i.test(stderr)) continue;
        throw new Error(`sshd did not start: ${stderr.trim()}`);
      }
      const clientConfig = path.join(dir, 'ssh_config');
      await writeFile(
        clientConfig,
        [
          'Host sbk-test',
          '  HostName 127.0.0.1',
          `  Port ${port}`,
          '  User root',
          `  IdentityFile ${path.join(dir, 'id')}`,
          '  IdentitiesOnly yes',
          '  StrictHostKeyChecking no',
          '  UserKnownHostsFile /dev/null',
          '  BatchMode yes',
          '  LogLevel ERROR',
          '',
        ].join('\n'),
      );
      const sshd: Sshd = {
        port,
        dir,
        host: 'sbk-test',
        config: clientConfig,
        sshCommand: `ssh -F ${clientConfig}`,
        log: () => stderr,
        stop,
      };
      // A login works end to end before any test relies on it.
      const probe = await execa('ssh', ['-F', clientConfig, 'sbk-test', 'echo ok'], { reject: false, stdin: 'ignore' });
      if (probe.stdout.trim() !== 'ok') throw new Error(`cannot log in to the test sshd: ${probe.stderr.trim()} ${stderr.trim()}`);
      return sshd;
    }
    throw new Error('no free port for the test sshd');
  } catch (err) {
    await stop();
    throw err;
  }
}

/**
 * Starts an sshd for the tests of `sb`; if it cannot start, `sb` is cleaned up before the error
 * goes on (the suite's afterAll would not know the sandbox is there).
 */
export async function startSshdFor(sb: Sandbox): Promise<Sshd> {
  try {
    return await startSshd();
  } catch (err) {
    await sb.cleanup();
    throw err;
  }
}

/**
 * The env of the remote pipelines against `sshd`: the ssh command, sbk's bin/ as the remote
 * PATH, the Host alias as HOST, and the pipelines with the sbk binaries first on PATH.
 */
export function remoteEnv(sshd: Sshd): Record<string, string> {
  return {
    SBK_SSH: sshd.sshCommand,
    SBK_REMOTE_PATH: path.join(ROOT, 'bin'),
    HOST: sshd.host,
    PATH: `${path.join(ROOT, 'pipelines')}:${path.join(ROOT, 'bin')}:${process.env.PATH}`,
  };
}
