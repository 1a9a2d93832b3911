import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { AgentError } from './errors';
import {
  configFileWithSecret,
  CLI_OPTIONS,
  camel,
  configKey,
  envName,
  flagFor,
  fromEnvironment,
  mergeSources,
  repeatedFlag,
  toAgentOptions,
  unknownVariables,
} from './config';
import { agentOptionsSchema, resolveAgentOptions } from './options';

/** The parts of a valibot schema that hold other schemas (a picklist's options are strings). */
interface SchemaNode {
  kind?: string;
  wrapped?: SchemaNode;
  options?: readonly SchemaNode[];
  entries?: Record<string, SchemaNode>;
  pipe?: readonly SchemaNode[];
}

/** Every option path of the library schema, e.g. queue.port, down to the leaves. */
function schemaPaths(node: unknown, prefix = ''): string[] {
  const schema = node as SchemaNode;
  const inner = (nodes: readonly SchemaNode[]): string[] => [
    ...new Set(nodes.filter((n) => n.kind === 'schema').flatMap((n) => schemaPaths(n, prefix))),
  ];
  if (schema.pipe) return inner(schema.pipe);
  if (schema.wrapped) return schemaPaths(schema.wrapped, prefix);
  if (schema.options) return inner(schema.options);
  if (schema.entries) {
    return Object.entries(schema.entries).flatMap(([k, v]) => [
      `${prefix}${k}`,
      ...schemaPaths(v, `${prefix}${k}.`),
    ]);
  }
  return [];
}

/** createAgent() options no CLI row sets, each for a reason. */
const LIBRARY_ONLY: Record<string, string> = {
  broker: 'an object; its fields have rows',
  'broker.connectTimeoutMs': 'mqtt.js default suits a daemon',
  signingKey: 'set by --key-file (row option signingKey)',
  service: 'an object; its fields have rows',
  queue: 'an object; its fields have rows',
  'queue.source': 'implied by the source URL or port row',
  'queue.tracker': 'an in-process tracker object',
  probe: 'an object; its fields have rows',
  thresholds: 'an object; its fields have rows',
  'thresholds.queueFull': 'library only so far',
  random: 'a function, for tests',
};

describe('config sources', () => {
  let dir: string;
  beforeAll(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'lw-config-'))));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, text: string): string => {
    const p = path.join(dir, name);
    writeFileSync(p, text);
    return p;
  };
  const codeOf = (fn: () => unknown): { code: string; message: string } => {
    try {
      fn();
    } catch (err) {
      expect(err).toBeInstanceOf(AgentError);
      return err as AgentError;
    }
    throw new Error('did not throw');
  };

  it('names every option the same way across flag, env var and config key', () => {
    expect(camel('backend-id')).toBe('backendId');
    expect(envName('backend-id')).toBe('LOADWISE_BACKEND_ID');
    expect(new Set(CLI_OPTIONS.map((o) => o.flag)).size).toBe(CLI_OPTIONS.length);
    for (const o of CLI_OPTIONS) {
      expect(o.help.length).toBeGreaterThan(10);
      expect(o.flag).toMatch(/^[a-z][a-z0-9]*(-[a-z0-9]+)*$/);
      // The env name and the config key are the flag, respelled; nothing else.
      expect(envName(o.flag)).toBe(`LOADWISE_${o.flag.toUpperCase().split('-').join('_')}`);
      const key = configKey(o);
      if (key !== undefined)
        expect(key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)).toBe(o.flag);
    }
    expect(CLI_OPTIONS.filter((o) => configKey(o) === undefined).map((o) => o.flag)).toEqual([
      'config',
      'once',
      'help',
      'version',
    ]);
    expect(CLI_OPTIONS.filter((o) => !fromEnvironment(o.flag)).map((o) => o.flag)).toEqual([
      'help',
      'version',
    ]);
  });

  it('ties every row to a real createAgent() option, and every option to a row or a reason', () => {
    const paths = schemaPaths(agentOptionsSchema);
    const set = new Set<string>();
    for (const o of CLI_OPTIONS) {
      for (const p of [o.option, ...Object.keys(o.implies ?? {})]) {
        if (p === undefined) continue;
        expect(paths).toContain(p);
        set.add(p);
      }
      for (const f of o.needs ?? []) expect(CLI_OPTIONS.map((x) => x.flag)).toContain(f);
    }
    const unset = paths.filter((p) => !set.has(p)).sort();
    expect(unset).toEqual(
      Object.keys(LIBRARY_ONLY)
        .filter((p) => !set.has(p))
        .sort(),
    );
  });

  it('turns a library option path into the flag the CLI user gave', () => {
    expect(flagFor('queue.port', { kernelPort: 80 })).toBe('--kernel-port');
    expect(flagFor('queue.url', { trackerUrl: 'x' })).toBe('--tracker-url');
    expect(flagFor('queue.url', { prometheusUrl: 'x' })).toBe('--prometheus-url');
    expect(flagFor('queue.gauge', { prometheusUrl: 'x' })).toBe('--prometheus-gauge');
    expect(flagFor('service', { servicePidFile: '/x', servicePid: 1 })).toBe('--service-pid');
    expect(flagFor('probe.expectStatus[0]', { probeExpectStatus: [1] })).toBe(
      '--probe-expect-status',
    );
    expect(flagFor('broker.cert', { tlsCert: '/c' })).toBe('--tls-cert');
    expect(flagFor('signingKey', { keyFile: '/k' })).toBe('--key-file');
    expect(flagFor('random', {})).toBeUndefined();
  });

  it('takes flag over environment over config file', () => {
    const config = file(
      'a.json',
      JSON.stringify({ backendId: 'from-file', intervalMs: 3000, prefix: 'file' }),
    );
    const env = { LOADWISE_INTERVAL_MS: '4000', LOADWISE_PREFIX: 'env' };
    expect(mergeSources({ config }, {})).toMatchObject({
      backendId: 'from-file',
      intervalMs: 3000,
      prefix: 'file',
    });
    expect(mergeSources({ config }, env)).toMatchObject({ intervalMs: 4000, prefix: 'env' });
    expect(mergeSources({ config, 'interval-ms': '5000' }, env)).toMatchObject({
      backendId: 'from-file',
      intervalMs: 5000,
    });
    expect(mergeSources({}, { LOADWISE_CONFIG: config })).toMatchObject({ backendId: 'from-file' });
  });

  it('reads an empty environment variable as unset, and an empty boolean in a file as an error', () => {
    // LOADWISE_TLS_INSECURE= (a blank env-file line) turned the certificate check off.
    expect(mergeSources({}, { LOADWISE_TLS_INSECURE: '', LOADWISE_PREFIX: '' })).toEqual({});
    expect(mergeSources({}, { LOADWISE_TLS_INSECURE: '1' })).toMatchObject({ tlsInsecure: true });
    const blank = file('blank.json', '{"backendId": "x", "tlsInsecure": ""}');
    expect(codeOf(() => mergeSources({ config: blank }, {})).message).toContain(
      '--tls-insecure: must be true or false',
    );
  });

  it('reads the early-report options from flag, environment and config file', () => {
    const config = file('early.json', JSON.stringify({ backendId: 'x', earlyRise: 3 }));
    expect(mergeSources({ config }, { LOADWISE_EARLY_MIN_GAP_MS: '40' })).toMatchObject({
      earlyRise: 3,
      earlyMinGapMs: 40,
    });
    const raw = mergeSources({ config, 'early-rise': '0' }, {});
    expect(toAgentOptions(raw, { requireBroker: false })).toMatchObject({ earlyRise: 0 });
  });

  it('never shows a password it refuses, and says which config file holds one', () => {
    const config = file('pw.json', JSON.stringify({ backendId: 'x', password: 12345678 }));
    const err = codeOf(() => mergeSources({ config }, {}));
    expect(err.message).toBe(
      `LW_AGENT_INVALID_OPTION: --password: must be a non-empty string (from ${config}, got <redacted>)`,
    );
    const ok = file('pw-ok.json', JSON.stringify({ backendId: 'x', password: 'S3CRET' }));
    expect(configFileWithSecret(mergeSources({ config: ok }, {}))).toBe(ok);
    const inUrl = file('url-pw.json', JSON.stringify({ broker: 'mqtt://u:S3CRET@127.0.0.1:1883' }));
    expect(configFileWithSecret(mergeSources({ config: inUrl }, {}))).toBe(inUrl);
    const none = file('no-pw.json', JSON.stringify({ backendId: 'x' }));
    expect(configFileWithSecret(mergeSources({ config: none }, {}))).toBeUndefined();
  });

  it('fails with one message naming the option', () => {
    expect(codeOf(() => mergeSources({ 'interval-ms': '1s' }, {})).message).toBe(
      'LW_AGENT_INVALID_OPTION: --interval-ms: must be an integer (from --interval-ms, got "1s")',
    );
    expect(codeOf(() => mergeSources({}, { LOADWISE_CPU_THRESHOLD: 'high' })).message).toContain(
      '--cpu-threshold: must be a number (from LOADWISE_CPU_THRESHOLD',
    );
    const bad = file('bad.json', '{"backendId": "x", "intervalMS": 5}');
    expect(codeOf(() => mergeSources({ config: bad }, {}))).toMatchObject({
      code: 'LW_AGENT_CONFIG_FILE',
      message: `LW_AGENT_CONFIG_FILE: ${bad}: unknown option intervalMS (did you mean intervalMs?)`,
    });
    const once = file('once.json', '{"backendId": "x", "once": true}');
    expect(codeOf(() => mergeSources({ config: once }, {})).message).toContain(
      'unknown option once',
    );
    expect(codeOf(() => mergeSources({ config: file('arr.json', '[1]') }, {}))).toMatchObject({
      code: 'LW_AGENT_CONFIG_FILE',
    });
    expect(
      codeOf(() => mergeSources({ config: path.join(dir, 'missing.json') }, {})),
    ).toMatchObject({
      code: 'LW_AGENT_CONFIG_FILE',
    });
  });

  it.each([
    ['cpu-threshold', '0x1', 'must be a number'],
    ['memory-threshold', '0b1', 'must be a number'],
    ['cpu-threshold', '5e-1', 'must be a number'],
    ['cpu-threshold', 'Infinity', 'must be a number'],
    ['probe-expect-status', '0x1F4,2e2', 'must be comma-separated integers'],
    ['probe-expect-status', '0o620', 'must be comma-separated integers'],
    ['probe-expect-status', '200,', 'must be comma-separated integers'],
  ])('reads --%s %s as decimal only, as an int option does', (flag, value, why) => {
    expect(codeOf(() => mergeSources({ [flag]: value }, {})).message).toContain(
      `--${flag}: ${why}`,
    );
  });

  it('reads decimal numbers and lists', () => {
    expect(mergeSources({ 'cpu-threshold': '0.85', 'memory-threshold': '.9' }, {})).toMatchObject({
      cpuThreshold: 0.85,
      memoryThreshold: 0.9,
    });
    expect(mergeSources({ 'probe-expect-status': '200, 204' }, {})).toMatchObject({
      probeExpectStatus: [200, 204],
    });
  });

  it('maps raw config to library options and checks combinations', () => {
    const raw = mergeSources(
      {
        'backend-id': 'b1',
        broker: 'mqtts://broker:8883',
        'tracker-url': 'http://127.0.0.1:3000/stats',
        'probe-url': 'http://127.0.0.1:3000/healthz',
        'probe-expect-status': '200,204',
        'service-pid': '42',
        'cpu-threshold': '0.8',
        'no-cgroup': true,
      },
      { LOADWISE_PASSWORD: 's3cret', LOADWISE_USERNAME: 'agent' },
    );
    const o = toAgentOptions(raw, { requireBroker: true });
    expect(o).toMatchObject({
      backendId: 'b1',
      broker: { url: 'mqtts://broker:8883', username: 'agent', password: 's3cret' },
      queue: { source: 'tracker', url: 'http://127.0.0.1:3000/stats' },
      probe: { url: 'http://127.0.0.1:3000/healthz', expectStatus: [200, 204] },
      service: { pid: 42 },
      thresholds: { cpuUtilization: 0.8 },
      cgroup: false,
    });
    expect(resolveAgentOptions(o).queue).toMatchObject({ source: 'tracker', timeoutMs: 500 });

    expect(codeOf(() => toAgentOptions({}, { requireBroker: false })).message).toContain(
      '--backend-id: is required',
    );
    expect(
      codeOf(() => toAgentOptions({ backendId: 'x' }, { requireBroker: true })).message,
    ).toContain('--broker: is required');
    expect(
      codeOf(() =>
        toAgentOptions(
          { backendId: 'x', trackerUrl: 'http://a/', kernelPort: 80 },
          { requireBroker: false },
        ),
      ).message,
    ).toContain('choose one queue source');
    // The library finds the missing gauge; the CLI names it by its flag.
    const noGauge = { backendId: 'x', prometheusUrl: 'http://a/' };
    const err = codeOf(() =>
      resolveAgentOptions(toAgentOptions(noGauge, { requireBroker: false })),
    );
    expect(err.message).toBe('LW_AGENT_INVALID_OPTION: queue.gauge: is required');
    expect(flagFor((err as AgentError).option!, noGauge)).toBe('--prometheus-gauge');
    expect(
      codeOf(() =>
        toAgentOptions(
          { backendId: 'x', broker: 'mqtt://a', tlsCa: '/nonexistent/ca.pem' },
          { requireBroker: true },
        ),
      ),
    ).toMatchObject({ code: 'LW_AGENT_KEY_FILE' });
  });

  it('--advertise-url needs --key-file, and goes into advertiseUrl', () => {
    const keys = file('adv-keys', `k ${Buffer.alloc(32, 1).toString('base64')}\n`);
    const url = 'http://10.0.0.5:8080';
    expect(
      toAgentOptions({ backendId: 'x', keyFile: keys, advertiseUrl: url }, { requireBroker: false })
        .advertiseUrl,
    ).toBe(url);
    const err = codeOf(() =>
      toAgentOptions({ backendId: 'x', advertiseUrl: url }, { requireBroker: false }),
    );
    expect(err.message).toContain('--key-file');
  });

  it('loads a signing key file and picks a key by id', () => {
    const keys = file(
      'keys',
      `# rotation\nold ${Buffer.alloc(32, 1).toString('base64')}\nnew hex:${'ab'.repeat(32)}\n`,
    );
    expect(
      toAgentOptions({ backendId: 'x', keyFile: keys }, { requireBroker: false }).signingKey?.keyId,
    ).toBe('old');
    expect(
      toAgentOptions({ backendId: 'x', keyFile: keys, keyId: 'new' }, { requireBroker: false })
        .signingKey?.keyId,
    ).toBe('new');
    expect(
      codeOf(() =>
        toAgentOptions({ backendId: 'x', keyFile: keys, keyId: 'nope' }, { requireBroker: false }),
      ).message,
    ).toContain('--key-id');
    expect(
      codeOf(() =>
        toAgentOptions(
          { backendId: 'x', keyFile: file('short', 'k c2hvcnQ=\n') },
          { requireBroker: false },
        ),
      ),
    ).toMatchObject({
      code: 'LW_AGENT_KEY_FILE',
    });
  });

  it('refuses a key, password or TLS file that is a named pipe or a device, or over 1 MiB', () => {
    // readFileSync took whatever the path was: a FIFO hung the agent at start with no
    // output, and /dev/zero grew it to 1.9 GB in 3 s.
    const fifo = path.join(dir, 'key-fifo');
    execFileSync('mkfifo', [fifo]);
    const big = file('big-keys', 'x'.repeat(1024 * 1024 + 1));
    for (const [which, raw, why] of [
      ['fifo key file', { backendId: 'x', keyFile: fifo }, 'not a regular file'],
      ['device key file', { backendId: 'x', keyFile: '/dev/zero' }, 'not a regular file'],
      ['large key file', { backendId: 'x', keyFile: big }, 'larger than 1 MiB'],
      ['fifo password', { backendId: 'x', passwordFile: fifo }, 'not a regular file'],
    ] as const) {
      const err = codeOf(() => toAgentOptions(raw, { requireBroker: false }));
      expect([which, (err as AgentError).code, err.message]).toEqual([
        which,
        'LW_AGENT_KEY_FILE',
        expect.stringContaining(why),
      ]);
    }
  });

  it('refuses a --config or LOADWISE_CONFIG file that is a named pipe or a device, or over 1 MiB', () => {
    // readFileSync took whatever the path was: --config /dev/zero grew the agent to
    // 2.1 GB, and a FIFO hung it at start with no output.
    const fifo = path.join(dir, 'config-fifo');
    execFileSync('mkfifo', [fifo]);
    const big = file('big.json', `{"backendId": "${'x'.repeat(1024 * 1024)}"}`);
    for (const [which, flags, env, why] of [
      ['large config', { config: big }, {}, `${big}: larger than 1 MiB`],
      ['device config', { config: '/dev/zero' }, {}, '/dev/zero: not a regular file'],
      ['fifo config', { config: fifo }, {}, `${fifo}: not a regular file`],
      ['fifo LOADWISE_CONFIG', {}, { LOADWISE_CONFIG: fifo }, `${fifo}: not a regular file`],
    ] as const) {
      const err = codeOf(() => mergeSources(flags, env));
      expect([which, (err as AgentError).code, err.message]).toEqual([
        which,
        'LW_AGENT_CONFIG_FILE',
        `LW_AGENT_CONFIG_FILE: ${why}`,
      ]);
    }
    const ok = file('ok.json', '{"backendId": "x"}');
    expect(mergeSources({ config: ok }, {})).toEqual({ backendId: 'x' });
  });

  it('refuses at start a key bound to other backends: every report it signed would be dropped', () => {
    const keys = file('bound-keys', `kw ${Buffer.alloc(32, 2).toString('base64')} web-*\n`);
    const ok = toAgentOptions({ backendId: 'web-3', keyFile: keys }, { requireBroker: false });
    expect(resolveAgentOptions(ok).signingKey?.backends).toEqual(['web-*']);
    const raw = { backendId: 'api-1', keyFile: keys };
    const err = codeOf(() => resolveAgentOptions(toAgentOptions(raw, { requireBroker: false })));
    expect(err).toMatchObject({ code: 'LW_AGENT_INVALID_OPTION' });
    expect(err.message).toContain('kw may sign only for web-*, not for api-1');
    expect(flagFor((err as AgentError).option!, raw)).toBe('--key-file');
  });

  it('names every LOADWISE_ variable it does not read, with the nearest known name when one is close', () => {
    expect(
      unknownVariables({
        PATH: '/usr/bin',
        LOADWISE_BACKEND_ID: 'api-1',
        LOADWISE_CONFIG: '/etc/loadwise/agent.json',
        LOADWISE_TRAKER_URL: 'http://127.0.0.1:3000/stats',
        LOADWISE_BROKR: 'mqtt://broker:1883',
        loadwise_interval_ms: '500',
        LOADWISE_HELP: '1',
        LOADWISE_FOO: 'x',
        // The gateway side's (@loadwise/protocol environment.ts): one env may serve both.
        LOADWISE_GW_BROKER: 'mqtt://broker:1883',
        LOADWISE_GW_NOT_ONE_OF_ITS_OWN: 'x',
        LOADWISE_STATUS_TOKEN: 't',
        LOADWISE_WORKER_INDEX: '0',
        // Close to a gateway-side name: that one is named.
        LOADWISE_STATUS_TOKN: 't',
        OTHER_LOADWISE_BROKER: 'x',
      }),
    ).toEqual([
      'LOADWISE_BROKR: unknown variable, ignored (did you mean LOADWISE_BROKER?)',
      'LOADWISE_FOO: unknown variable, ignored (see --help)',
      'LOADWISE_HELP: unknown variable, ignored (see --help)',
      'LOADWISE_STATUS_TOKN: unknown variable, ignored (did you mean LOADWISE_STATUS_TOKEN?)',
      'LOADWISE_TRAKER_URL: unknown variable, ignored (did you mean LOADWISE_TRACKER_URL?)',
      'loadwise_interval_ms: unknown variable, ignored (did you mean LOADWISE_INTERVAL_MS?)',
    ]);
    // Every variable the CLI reads, and none it does not.
    const own = Object.fromEntries(
      CLI_OPTIONS.filter((o) => fromEnvironment(o.flag)).map((o) => [envName(o.flag), 'x']),
    );
    expect(unknownVariables(own)).toEqual([]);
  });

  describe('one broker password', () => {
    const PW = 'agentS3cret';
    const password = (raw: ReturnType<typeof mergeSources>): unknown => {
      const o = toAgentOptions(
        { backendId: 'x', broker: 'mqtt://u@h', ...raw },
        {
          requireBroker: true,
        },
      );
      return { url: o.broker!.url, password: o.broker!.password };
    };
    let pf: string;
    beforeAll(() => (pf = file('pw-file', 'fromFile\n')));

    it.each<[string, Record<string, unknown>, NodeJS.ProcessEnv, string]>([
      ['two flags', { password: PW, 'password-file': 'PF' }, {}, '--password and --password-file'],
      [
        'two variables',
        {},
        { LOADWISE_PASSWORD: PW, LOADWISE_PASSWORD_FILE: 'PF' },
        'LOADWISE_PASSWORD and LOADWISE_PASSWORD_FILE',
      ],
      [
        "a flag and the flag's URL",
        { broker: `mqtt://u:${PW}@h`, password: 'other' },
        {},
        'the URL of --broker and --password',
      ],
      [
        "a variable and the variable's URL",
        {},
        { LOADWISE_BROKER: `mqtt://u:${PW}@h`, LOADWISE_PASSWORD_FILE: 'PF' },
        'the URL of LOADWISE_BROKER and LOADWISE_PASSWORD_FILE',
      ],
    ])('refuses two at one level, naming both and never the value: %s', (_, flags, env, both) => {
      const fill = (v: unknown): unknown => (v === 'PF' ? pf : v);
      const err = codeOf(() =>
        mergeSources(
          Object.fromEntries(Object.entries(flags).map(([k, v]) => [k, fill(v)])),
          Object.fromEntries(Object.entries(env).map(([k, v]) => [k, fill(v) as string])),
        ),
      );
      expect(err.code).toBe('LW_AGENT_INVALID_OPTION');
      expect(err.message).toContain(`${both} both give one`);
      expect(err.message).not.toContain(PW);
      expect(err.message).not.toContain('fromFile');
    });

    it('refuses two in one config file', () => {
      const config = file('two-pw.json', JSON.stringify({ password: PW, passwordFile: pf }));
      expect(codeOf(() => mergeSources({ config }, {})).message).toBe(
        `LW_AGENT_INVALID_OPTION: --password-file: give the broker password once: password in ${config} and passwordFile in ${config} both give one`,
      );
    });

    it('takes the one of the highest level, flag > environment > file, and drops the others', () => {
      // The flag over the variable, whichever of the two is the file.
      expect(password(mergeSources({ password: PW }, { LOADWISE_PASSWORD_FILE: pf }))).toEqual({
        url: 'mqtt://u@h',
        password: PW,
      });
      const fileWins = mergeSources({ 'password-file': pf }, { LOADWISE_PASSWORD: PW });
      expect(fileWins['password']).toBeUndefined();
      expect(password(fileWins)).toEqual({ url: 'mqtt://u@h', password: 'fromFile' });
      // A URL's password loses to a flag's (the URL keeps its user), and beats a variable's.
      expect(
        password(mergeSources({ password: PW }, { LOADWISE_BROKER: 'mqtt://u:old@h:1883' })),
      ).toEqual({ url: 'mqtt://u@h:1883', password: PW });
      expect(
        password(mergeSources({ broker: `mqtt://u:${PW}@h` }, { LOADWISE_PASSWORD_FILE: pf })),
      ).toEqual({ url: `mqtt://u:${PW}@h`, password: undefined });
      // With a username given too, the URL loses its user with its password: mqtt.js sends
      // the URL's user whatever --username says (alice's name with bob's password).
      const apart = mergeSources(
        { username: 'bob', password: PW },
        { LOADWISE_BROKER: 'mqtt://alice:old@h:1883' },
      );
      expect([apart['broker'], apart['username'], apart['password']]).toEqual([
        'mqtt://h:1883',
        'bob',
        PW,
      ]);
      // A username of a lower level than the URL's does not take the URL's user away: the
      // config file's bob beside LOADWISE_BROKER's alice gave bob.
      const cfg = file('cfg-user.json', JSON.stringify({ username: 'bob' }));
      const lower = mergeSources(
        { password: PW, config: cfg },
        { LOADWISE_BROKER: 'mqtt://alice:old@h:1883' },
      );
      expect([lower['broker'], lower['username']]).toEqual(['mqtt://alice@h:1883', undefined]);
      // A URL's user without a password, below a --username: the flag's user (mqtt.js sent
      // alice whatever --username said).
      const userOnly = mergeSources({ username: 'bob' }, { LOADWISE_BROKER: 'mqtt://alice@h' });
      expect([userOnly['broker'], userOnly['username']]).toEqual(['mqtt://h', 'bob']);
      // With the URL's own password kept: that password is alice's, so bob is refused.
      expect(
        codeOf(() => mergeSources({ username: 'bob' }, { LOADWISE_BROKER: 'mqtt://alice:pw@h' }))
          .message,
      ).toBe(
        "LW_AGENT_INVALID_OPTION: --username: give the broker user once: the URL of LOADWISE_BROKER and --username both give one, and the URL's password is its own user's",
      );
      // Same level, with a password from another place taking the URL's: still two users.
      expect(
        codeOf(() =>
          mergeSources(
            { password: PW },
            { LOADWISE_BROKER: 'mqtt://alice:old@h', LOADWISE_USERNAME: 'bob' },
          ),
        ).message,
      ).toMatch(/give the broker user once: the URL of LOADWISE_BROKER and LOADWISE_USERNAME/);
      // A malformed escape in the URL's user: one line, not a URIError with a stack.
      expect(
        codeOf(() => mergeSources({ broker: 'mqtt://%E0@h', username: 'x', password: PW }, {}))
          .message,
      ).toBe(
        'LW_AGENT_INVALID_OPTION: --broker: the user in the URL of --broker has a malformed %-escape',
      );
      // Two users at one level: refused, as two passwords are.
      expect(
        codeOf(() =>
          mergeSources({}, { LOADWISE_BROKER: 'mqtt://alice@h', LOADWISE_USERNAME: 'carol' }),
        ).message,
      ).toBe(
        'LW_AGENT_INVALID_OPTION: --username: give the broker user once: the URL of LOADWISE_BROKER and LOADWISE_USERNAME both give one',
      );
      // A variable over the config file.
      const config = file('cfg-pw.json', JSON.stringify({ passwordFile: pf }));
      expect(password(mergeSources({ config }, { LOADWISE_PASSWORD: PW }))).toEqual({
        url: 'mqtt://u@h',
        password: PW,
      });
    });
  });

  it('refuses a flag given twice, never showing its value', () => {
    expect(repeatedFlag(['backend-id', 'once', 'broker'])).toBeUndefined();
    expect(repeatedFlag(['backend-id', 'once', 'backend-id'])).toBe(
      '--backend-id: given 2 times; give it once',
    );
    expect(repeatedFlag(['probe-expect-status', 'probe-expect-status'])).toBe(
      '--probe-expect-status: given 2 times; give it once (a list is comma-separated: 200,204)',
    );
    // The built CLI, end to end: exit 2 and one line, where api-2 was published.
    const cli = path.resolve(__dirname, '../dist/cli.js');
    const r = spawnSync(
      process.execPath,
      [cli, '--backend-id', 'api-1', '--once', '--password', 'a', '--backend-id', 'api-2'],
      { encoding: 'utf8', env: { PATH: process.env['PATH'] } },
    );
    expect({ status: r.status, stderr: r.stderr, stdout: r.stdout }).toEqual({
      status: 2,
      stderr:
        'loadwise-agent: LW_AGENT_INVALID_OPTION: --backend-id: given 2 times; give it once\n',
      stdout: '',
    });
  });

  it('refuses a --cgroup-root or --proc-root that is not a directory', () => {
    const root = path.join(dir, 'root');
    mkdirSync(root, { recursive: true });
    const plain = file('not-a-dir', '');
    const opts = (raw: Record<string, unknown>) =>
      toAgentOptions({ backendId: 'x', ...raw } as never, { requireBroker: false });
    for (const [flag, key] of [
      ['cgroup-root', 'cgroupRoot'],
      ['proc-root', 'procRoot'],
    ] as const) {
      expect(codeOf(() => opts({ [key]: '/nonexistent' })).message).toBe(
        `LW_AGENT_INVALID_OPTION: --${flag}: /nonexistent does not exist`,
      );
      expect(codeOf(() => opts({ [key]: plain })).message).toBe(
        `LW_AGENT_INVALID_OPTION: --${flag}: ${plain} is not a directory`,
      );
    }
    expect(opts({ cgroupRoot: root, procRoot: root })).toMatchObject({
      cgroup: { root },
      procRoot: root,
    });
    // Not read at all with --no-cgroup.
    expect(opts({ cgroupRoot: '/nonexistent', noCgroup: true })).toMatchObject({ cgroup: false });
  });
});
