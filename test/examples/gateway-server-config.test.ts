/**
 * examples/gateway-server.ts reads its environment as docs/operations.md says:
 * an empty LOADWISE_GW_HOST is unset (it listened on every interface), unsigned
 * reports count only when LOADWISE_GW_ALLOW_UNSIGNED says so (nothing could
 * say it, and without a key file no agent was ever heard), a password file
 * needs a username, and an address it cannot listen on is one line and exit 2
 * (it was a stack trace and exit 1). Empty counts as unset for every variable
 * (an empty LOADWISE_GW_PORT was "not a port"); broker settings without a
 * broker, a file that is not a regular file of at most 1 MiB and a flag it
 * does not take are refused at start (they were ignored, hung it, or grew it
 * until it crashed).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { configFromEnv, READY_TIMEOUT_MS, STOP_GRACE_MS } from '../../examples/gateway-server';
import { spawnScript } from '../kit/agent-cli';

const GATEWAY_SERVER = path.resolve(__dirname, '../../examples/dist/gateway-server.js');
const BACKENDS = { LOADWISE_GW_BACKENDS: 'api-1=http://127.0.0.1:9' };

describe('configFromEnv', () => {
  it('takes an empty LOADWISE_GW_HOST as unset: loopback, not every interface', () => {
    expect(configFromEnv({ ...BACKENDS, LOADWISE_GW_HOST: '' }).host).toBe('127.0.0.1');
    expect(configFromEnv({ ...BACKENDS, LOADWISE_GW_HOST: '0.0.0.0' }).host).toBe('0.0.0.0');
  });

  it('counts unsigned reports only with LOADWISE_GW_ALLOW_UNSIGNED=1', () => {
    expect(configFromEnv(BACKENDS).options.allowUnsigned).toBeUndefined();
    expect(
      configFromEnv({ ...BACKENDS, LOADWISE_GW_ALLOW_UNSIGNED: '0' }).options.allowUnsigned,
    ).toBeUndefined();
    expect(
      configFromEnv({ ...BACKENDS, LOADWISE_GW_ALLOW_UNSIGNED: '1' }).options.allowUnsigned,
    ).toBe(true);
    expect(() => configFromEnv({ ...BACKENDS, LOADWISE_GW_ALLOW_UNSIGNED: 'yes' })).toThrow(
      'LOADWISE_GW_ALLOW_UNSIGNED: 0 or 1 (got "yes")',
    );
  });

  it('names the variable meant for a mistyped one', () => {
    expect(() => configFromEnv({ ...BACKENDS, LOADWISE_GW_BACKEND: 'x' })).toThrow(
      'LOADWISE_GW_BACKEND: unknown variable (did you mean LOADWISE_GW_BACKENDS?)',
    );
    expect(() => configFromEnv({ ...BACKENDS, LOADWISE_GW_COLOUR: 'x' })).toThrow(
      'LOADWISE_GW_COLOUR: unknown variable (see --help)',
    );
  });

  it('takes every empty variable as unset: its default, not a refusal', () => {
    const config = configFromEnv({
      ...BACKENDS,
      LOADWISE_GW_BROKER: '',
      LOADWISE_GW_PREFIX: '',
      LOADWISE_GW_KEY_FILE: '',
      LOADWISE_GW_ALLOW_UNSIGNED: '',
      LOADWISE_GW_STATUS_TOKEN: '',
      LOADWISE_GW_ID: '',
      LOADWISE_GW_PORT: '',
      LOADWISE_GW_ACCEPT_HANDLES: '',
      LOADWISE_GW_STOP_GRACE_MS: '',
      LOADWISE_GW_READY_TIMEOUT_MS: '',
      LOADWISE_GW_MAX_IN_FLIGHT_PER_CLIENT: '',
      LOADWISE_GW_TRUST_FORWARDED: '',
    });
    expect(config).toMatchObject({
      port: 8080,
      acceptHandles: 1,
      stopGraceMs: STOP_GRACE_MS,
      readyTimeoutMs: READY_TIMEOUT_MS,
      id: undefined,
    });
    expect(config.options.broker).toBeUndefined();
    expect(config.options.statusToken).toBeUndefined();
    expect(config.options.maxInFlightPerClient).toBeUndefined();
    expect(config.options.trustForwarded).toBeUndefined();
  });

  it.each([
    'LOADWISE_GW_TLS_CA',
    'LOADWISE_GW_TLS_CERT',
    'LOADWISE_GW_TLS_KEY',
    'LOADWISE_GW_USERNAME',
    'LOADWISE_GW_PASSWORD_FILE',
  ])('refuses %s without LOADWISE_GW_BROKER (there is no broker for it)', (name) => {
    expect(() => configFromEnv({ ...BACKENDS, [name]: '/etc/loadwise/x' })).toThrow(
      `${name}: needs LOADWISE_GW_BROKER`,
    );
    // Empty: unset, nothing to refuse.
    expect(() => configFromEnv({ ...BACKENDS, [name]: '' })).not.toThrow();
  });

  it('refuses a file over 1 MiB, and one that is not a regular file, in one line', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-gw-config-'));
    try {
      const big = path.join(dir, 'keys');
      writeFileSync(big, `k1 ${'A'.repeat(1024 * 1024)}\n`);
      expect(() => configFromEnv({ ...BACKENDS, LOADWISE_GW_KEY_FILE: big })).toThrow(
        `LOADWISE_GW_KEY_FILE: cannot read ${big}: larger than 1 MiB`,
      );
      expect(() => configFromEnv({ ...BACKENDS, LOADWISE_GW_KEY_FILE: dir })).toThrow(
        `LOADWISE_GW_KEY_FILE: cannot read ${dir}: not a regular file`,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses a password file without a username', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-gw-config-'));
    try {
      const file = path.join(dir, 'password');
      writeFileSync(file, 'secret\n');
      const env = {
        ...BACKENDS,
        LOADWISE_GW_BROKER: 'mqtt://127.0.0.1:1883',
        LOADWISE_GW_PASSWORD_FILE: file,
      };
      expect(() => configFromEnv(env)).toThrow(
        'LOADWISE_GW_PASSWORD_FILE: needs LOADWISE_GW_USERNAME (or a user in LOADWISE_GW_BROKER)',
      );
      const inUrl = { ...env, LOADWISE_GW_BROKER: 'mqtt://gw@127.0.0.1:1883' };
      expect(configFromEnv(inUrl).options.broker).toMatchObject({ password: 'secret' });
      const broker = configFromEnv({ ...env, LOADWISE_GW_USERNAME: 'gw' }).options.broker;
      expect(broker).toMatchObject({ username: 'gw', password: 'secret' });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test('an address it cannot listen on: one line naming the variables, exit 2', async () => {
  // TEST-NET-1 (RFC 5737): no interface of this machine has it, and no DNS is asked.
  const run = spawnScript(GATEWAY_SERVER, [], {
    ...BACKENDS,
    LOADWISE_GW_HOST: '192.0.2.1',
    LOADWISE_GW_PORT: '0',
  });
  expect(await run.exited).toBe(2);
  expect(run.stderr()).toContain(
    'gateway-server: LOADWISE_GW_HOST/LOADWISE_GW_PORT: cannot listen on 192.0.2.1:0 (EADDRNOTAVAIL)\n',
  );
  expect(run.stderr()).not.toMatch(/\n\s+at /);
}, 30_000);

test('a named pipe or /dev/zero as a file: one line and exit 2, no hang and no growth', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-gw-config-'));
  try {
    const fifo = path.join(dir, 'keys');
    execFileSync('mkfifo', [fifo]);
    for (const [name, file] of [
      ['LOADWISE_GW_KEY_FILE', fifo],
      ['LOADWISE_GW_KEY_FILE', '/dev/zero'],
    ] as const) {
      const run = spawnScript(GATEWAY_SERVER, [], { ...BACKENDS, [name]: file });
      // readFileSync waited for a writer on the pipe for good, and read /dev/zero until the
      // heap ran out: stopped here, so the test fails instead of hanging.
      const guard = setTimeout(() => void run.kill(), 10_000);
      const code = await run.exited;
      clearTimeout(guard);
      expect({ file, code, stderr: run.stderr() }).toEqual({
        file,
        code: 2,
        stderr: `gateway-server: ${name}: cannot read ${file}: not a regular file\n`,
      });
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 30_000);

test.each([[['--exit-with-parnt']], [['exit-with-parent']], [['--help=1']]])(
  'refuses %j with one line and exit 2 (it started, ignoring it)',
  async (args) => {
    const run = spawnScript(GATEWAY_SERVER, args, { ...BACKENDS, LOADWISE_GW_PORT: '0' });
    const guard = setTimeout(() => void run.kill(), 10_000);
    const code = await run.exited;
    clearTimeout(guard);
    expect(code).toBe(2);
    expect(run.stderr()).toMatch(/^gateway-server: .+; --help lists the flag and the variables\n$/);
    expect(run.stdout()).toBe('');
  },
  30_000,
);
