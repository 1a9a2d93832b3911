/**
 * examples/gateway-server.ts reads its environment as docs/operations.md says:
 * an empty LOADWISE_GW_HOST is unset (it listened on every interface), unsigned
 * reports count only when LOADWISE_GW_ALLOW_UNSIGNED says so (nothing could
 * say it, and without a key file no agent was ever heard), a password file
 * needs a username, and an address it cannot listen on is one line and exit 2
 * (it was a stack trace and exit 1).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { configFromEnv } from '../../examples/gateway-server';
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
