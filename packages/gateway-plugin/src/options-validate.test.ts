import { readFileSync } from 'node:fs';
import mqtt from 'mqtt';
import path from 'node:path';
import { GatewayError, type GatewayErrorCode } from './errors';
import { loadBalance } from './load-balance';
import { DEFAULTS, type LoadBalanceOptions } from './options';
import { resolveOptions } from './options-validate';

const base: LoadBalanceOptions = { backends: [{ id: 'a', url: 'http://127.0.0.1:3000' }] };
const key = { keyId: 'k1', secret: Buffer.alloc(32, 1) };

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return err instanceof GatewayError ? err.code : `not a GatewayError: ${String(err)}`;
  }
  return undefined;
}

// Table-driven (undici style): options → the code they must throw.
const cases: Array<[string, unknown, GatewayErrorCode]> = [
  ['options not an object', 'nope', 'LW_GW_INVALID_OPTION'],
  ['no backends', { backends: [] }, 'LW_GW_NO_BACKENDS'],
  ['backends not an array', { backends: {} }, 'LW_GW_INVALID_OPTION'],
  [
    'backend id with a slash',
    { backends: [{ id: 'a/b', url: 'http://h' }] },
    'LW_GW_INVALID_BACKEND_ID',
  ],
  [
    'backend id with a wildcard',
    { backends: [{ id: '+', url: 'http://h' }] },
    'LW_GW_INVALID_BACKEND_ID',
  ],
  [
    'duplicate id',
    {
      backends: [
        { id: 'a', url: 'http://h' },
        { id: 'a', url: 'http://i' },
      ],
    },
    'LW_GW_DUPLICATE_BACKEND',
  ],
  ['ftp url', { backends: [{ id: 'a', url: 'ftp://h' }] }, 'LW_GW_INVALID_BACKEND_URL'],
  ['relative url', { backends: [{ id: 'a', url: '/x' }] }, 'LW_GW_INVALID_BACKEND_URL'],
  [
    'url with credentials',
    { backends: [{ id: 'a', url: 'http://u:p@h' }] },
    'LW_GW_INVALID_BACKEND_URL',
  ],
  [
    'url with a query',
    { backends: [{ id: 'a', url: 'http://h/?q' }] },
    'LW_GW_INVALID_BACKEND_URL',
  ],
  // No server listens there: a backend at it could never be reached.
  ['url at port 0', { backends: [{ id: 'a', url: 'http://h:0' }] }, 'LW_GW_INVALID_BACKEND_URL'],
  [
    'url at port 00',
    { backends: [{ id: 'a', url: 'https://10.0.0.1:00/x' }] },
    'LW_GW_INVALID_BACKEND_URL',
  ],
  ['weight zero', { backends: [{ id: 'a', url: 'http://h', weight: 0 }] }, 'LW_GW_INVALID_OPTION'],
  ['http broker', { ...base, broker: 'http://broker' }, 'LW_GW_INVALID_BROKER'],
  ['broker garbage', { ...base, broker: 42 }, 'LW_GW_INVALID_BROKER'],
  // No host (an empty template variable): mqtt.js connected to localhost:1883.
  ['broker url with no host', { ...base, broker: 'mqtt://' }, 'LW_GW_INVALID_BROKER'],
  ['broker url of a bare path', { ...base, broker: 'mqtt:///' }, 'LW_GW_INVALID_BROKER'],
  [
    'broker.url with no host',
    { ...base, broker: { url: 'mqtt:broker.internal:1883' } },
    'LW_GW_INVALID_BROKER',
  ],
  // mqtt.js takes the URL's clientId over the gateway's own: every worker or gateway started
  // from that URL connected with one id, and the broker dropped them in turn.
  ['broker url with clientId', { ...base, broker: 'mqtt://b?clientId=gw' }, 'LW_GW_INVALID_BROKER'],
  [
    'broker.url with clientId',
    { ...base, broker: { url: 'wss://b/mqtt?x=1&clientId=gw' } },
    'LW_GW_INVALID_BROKER',
  ],
  ['broker client without subscribe', { ...base, broker: { client: {} } }, 'LW_GW_INVALID_BROKER'],
  // TLS options beside a clear-text URL were ignored: the password went out in clear text.
  [
    'broker ca with mqtt://',
    { ...base, broker: { url: 'mqtt://broker:1883', username: 'u', password: 'p', ca: 'PEM' } },
    'LW_GW_INVALID_BROKER',
  ],
  [
    'broker rejectUnauthorized with ws://',
    { ...base, broker: { url: 'ws://broker:8080', rejectUnauthorized: true } },
    'LW_GW_INVALID_BROKER',
  ],
  // Dropped without a word before: the broker refused the connection for want of one.
  [
    'broker cert without key',
    { ...base, broker: { url: 'mqtts://broker:8883', cert: 'PEM' } },
    'LW_GW_INVALID_BROKER',
  ],
  [
    'broker ca with no certificate in it',
    { ...base, broker: { url: 'mqtts://broker:8883', ca: '/etc/ssl/ca.pem' } },
    'LW_GW_INVALID_BROKER',
  ],
  [
    'healthCheck.host with a path',
    { ...base, healthCheck: { host: 'api.example.com/admin' } },
    'LW_GW_INVALID_OPTION',
  ],
  ['embedded false', { ...base, broker: { embedded: false } }, 'LW_GW_INVALID_BROKER'],
  [
    'embedded port out of range',
    { ...base, broker: { embedded: true, port: 70000 } },
    'LW_GW_INVALID_OPTION',
  ],
  ['unknown strategy', { ...base, strategy: 'fastest' }, 'LW_GW_UNKNOWN_STRATEGY'],
  [
    'bad strategy option',
    { ...base, strategy: 'load-aware', strategyOptions: { choices: 0 } },
    'LW_GW_INVALID_OPTION',
  ],
  ['bad load option', { ...base, load: { slowStartMs: -1 } }, 'LW_GW_INVALID_OPTION'],
  ['topic prefix with wildcard', { ...base, topicPrefix: 'a/#' }, 'LW_GW_INVALID_OPTION'],
  [
    'short key',
    { ...base, keys: [{ keyId: 'k', secret: Buffer.alloc(4) }] },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'a key bound to no backend',
    { ...base, keys: [{ keyId: 'k', secret: Buffer.alloc(32), backends: [] }] },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'a key bound to a backend id no topic can carry',
    { ...base, keys: [{ keyId: 'k', secret: Buffer.alloc(32), backends: ['a/b'] }] },
    'LW_GW_INVALID_OPTION',
  ],
  ['requireSignature without keys', { ...base, requireSignature: true }, 'LW_GW_INVALID_OPTION'],
  ['allowUnsigned not a boolean', { ...base, allowUnsigned: 'yes' }, 'LW_GW_INVALID_OPTION'],
  [
    'allowUnsigned with requireSignature',
    { ...base, keys: [key], requireSignature: true, allowUnsigned: true },
    'LW_GW_INVALID_OPTION',
  ],
  ['unsigned penalty below 1', { ...base, unsignedMaxPenalty: 0.5 }, 'LW_GW_INVALID_OPTION'],
  ['unsigned penalty above 8', { ...base, unsignedMaxPenalty: 9 }, 'LW_GW_INVALID_OPTION'],
  ['retained age zero', { ...base, maxRetainedAgeMs: 0 }, 'LW_GW_INVALID_OPTION'],
  [
    'message rate zero',
    { ...base, messageLimits: { perBackendPerSec: 0 } },
    'LW_GW_INVALID_OPTION',
  ],
  ['message limits not an object', { ...base, messageLimits: 5 }, 'LW_GW_INVALID_OPTION'],
  [
    'packet bound below 1 KiB',
    { ...base, messageLimits: { maxPacketBytes: 100 } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'packet bound not above the payload bound',
    { ...base, maxPayloadBytes: 8192, messageLimits: { maxPacketBytes: 8192 } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'protocol version 3',
    { ...base, broker: { url: 'mqtt://h', protocolVersion: 3 } },
    'LW_GW_INVALID_OPTION',
  ],
  ['negative timeout', { ...base, requestTimeoutMs: -1 }, 'LW_GW_INVALID_OPTION'],
  ['NaN timeout', { ...base, connectTimeoutMs: NaN }, 'LW_GW_INVALID_OPTION'],
  ['retries above 10', { ...base, retry: { maxRetries: 11 } }, 'LW_GW_INVALID_OPTION'],
  [
    'retry methods not names',
    { ...base, retry: { methods: ['GET POST'] } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'ejection percent > 100',
    { ...base, outlier: { maxEjectionPercent: 101 } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'max ejection below base',
    { ...base, outlier: { baseEjectionMs: 10, maxEjectionMs: 5 } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'health path without slash',
    { ...base, healthCheck: { path: 'health' } },
    'LW_GW_INVALID_OPTION',
  ],
  ['queue size fraction', { ...base, saturation: { queueSize: 1.5 } }, 'LW_GW_INVALID_OPTION'],
  ['overload not an object', { ...base, overload: 3 }, 'LW_GW_INVALID_OPTION'],
  ['affinity without a source', { ...base, affinity: {} }, 'LW_GW_INVALID_OPTION'],
  [
    'affinity beside a built-in strategy that ignores it',
    { ...base, strategy: 'least-in-flight', affinity: { header: 'x-u' } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'statusPath and metricsPath the same',
    { ...base, statusPath: '/_lb', metricsPath: '/_lb' },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'setCookie without cookie',
    { ...base, affinity: { header: 'x-u', setCookie: true } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'discovery without keys',
    { ...base, discovery: { allowedRanges: ['10.0.0.0/8'] } },
    'LW_GW_INVALID_DISCOVERY',
  ],
  [
    'discovery without ranges',
    { ...base, keys: [key], discovery: { allowedRanges: [] } },
    'LW_GW_INVALID_DISCOVERY',
  ],
  [
    'discovery bad cidr',
    { ...base, keys: [key], discovery: { allowedRanges: ['10.0.0.0/33'] } },
    'LW_GW_INVALID_DISCOVERY',
  ],
  [
    'discovery name not cidr',
    { ...base, keys: [key], discovery: { allowedRanges: ['example.com/8'] } },
    'LW_GW_INVALID_DISCOVERY',
  ],
  ['status path relative', { ...base, statusPath: 'status' }, 'LW_GW_INVALID_OPTION'],
  // Joined to each backend's base path: none may name a host or leave that path.
  ['health path //host', { ...base, healthCheck: { path: '//evil/x' } }, 'LW_GW_INVALID_OPTION'],
  ['health path ..', { ...base, healthCheck: { path: '/../admin' } }, 'LW_GW_INVALID_OPTION'],
  ['health path backslash', { ...base, healthCheck: { path: '/a\\b' } }, 'LW_GW_INVALID_OPTION'],
  ['short status token', { ...base, statusToken: 'abc' }, 'LW_GW_INVALID_OPTION'],
  // Read from a secret file with its newline, it could never match: refused at construction.
  [
    'status token with a trailing newline',
    { ...base, statusPath: '/_lb/status', statusToken: 'long-enough\n' },
    'LW_GW_INVALID_OPTION',
  ],
  ['decision header with space', { ...base, decisionHeader: 'x y' }, 'LW_GW_INVALID_OPTION'],
  ['logger without warn', { ...base, logger: { info() {} } }, 'LW_GW_INVALID_OPTION'],
  ['now not a function', { ...base, now: 5 }, 'LW_GW_INVALID_OPTION'],
  ['metrics registry not a registry', { ...base, metricsRegistry: {} }, 'LW_GW_INVALID_OPTION'],
  ['body timeout zero', { ...base, clientBodyTimeoutMs: 0 }, 'LW_GW_INVALID_OPTION'],
  ['body timeout true', { ...base, clientBodyTimeoutMs: true }, 'LW_GW_INVALID_OPTION'],
  [
    'body min rate zero',
    { ...base, clientBodyMinRate: { bytesPerSec: 0 } },
    'LW_GW_INVALID_OPTION',
  ],
  ['body min rate true', { ...base, clientBodyMinRate: true }, 'LW_GW_INVALID_OPTION'],
  [
    'body min rate negative grace',
    { ...base, clientBodyMinRate: { graceMs: -1 } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'body min rate unknown key',
    { ...base, clientBodyMinRate: { bytesPerSecond: 240 } },
    'LW_GW_INVALID_OPTION',
  ],
  ['request buffering true', { ...base, requestBuffering: true }, 'LW_GW_INVALID_OPTION'],
  [
    'request buffering maxBytes zero',
    { ...base, requestBuffering: { maxBytes: 0 } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'request buffering total under maxBytes',
    { ...base, requestBuffering: { maxBytes: 1024, maxTotalBytes: 512 } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'request buffering unknown key',
    { ...base, requestBuffering: { maxBodyBytes: 1024 } },
    'LW_GW_INVALID_OPTION',
  ],
  ['per-client bound fraction', { ...base, maxInFlightPerClient: 2.5 }, 'LW_GW_INVALID_OPTION'],
  ['per-client bound zero', { ...base, maxInFlightPerClient: 0 }, 'LW_GW_INVALID_OPTION'],
  ['trusted proxies 33', { ...base, trustForwarded: 33 }, 'LW_GW_INVALID_OPTION'],
  ['trusted proxies -1', { ...base, trustForwarded: -1 }, 'LW_GW_INVALID_OPTION'],
  ['trusted proxies 1.5', { ...base, trustForwarded: 1.5 }, 'LW_GW_INVALID_OPTION'],
  ['trusted proxies as text', { ...base, trustForwarded: '1' }, 'LW_GW_INVALID_OPTION'],
  [
    'trusted header not a forwarding spelling',
    { ...base, trustForwarded: 1, trustHeaders: ['authorization'] },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'trusted headers as text',
    { ...base, trustForwarded: 1, trustHeaders: 'x-client-ip' },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'trusted headers without trusted proxies',
    { ...base, trustHeaders: ['x-client-ip'] },
    'LW_GW_INVALID_OPTION',
  ],
  ['WebSocket idle zero', { ...base, webSockets: { idleTimeoutMs: 0 } }, 'LW_GW_INVALID_OPTION'],
  [
    'WebSockets per client 1.5',
    { ...base, webSockets: { maxPerClient: 1.5 } },
    'LW_GW_INVALID_OPTION',
  ],
  ['WebSockets max open true', { ...base, webSockets: { maxOpen: true } }, 'LW_GW_INVALID_OPTION'],
  ['stream lane after 0 ms', { ...base, streams: { afterMs: 0 } }, 'LW_GW_INVALID_OPTION'],
  [
    'stream content type not a media type',
    { ...base, streams: { contentTypes: ['event-stream'] } },
    'LW_GW_INVALID_OPTION',
  ],
  ['WebSockets unknown key', { ...base, webSockets: { idleMs: 5 } }, 'LW_GW_INVALID_OPTION'],
  ['unknown top-level key', { ...base, stratgy: 'p2c' }, 'LW_GW_INVALID_OPTION'],
  ['unknown nested key', { ...base, healthCheck: { pathh: '/h' } }, 'LW_GW_INVALID_OPTION'],
  [
    'unknown backend key',
    { backends: [{ id: 'a', url: 'http://h', wieght: 2 }] },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'unknown broker key',
    { ...base, broker: { url: 'mqtt://h', usrname: 'u' } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'duplicate url',
    {
      backends: [
        { id: 'a', url: 'http://h:1' },
        { id: 'b', url: 'http://h:1/' },
      ],
    },
    'LW_GW_DUPLICATE_BACKEND',
  ],
  ['token without a path', { ...base, statusToken: 'long-enough' }, 'LW_GW_INVALID_OPTION'],
  [
    'selfHandleResponse without on.proxyRes',
    { ...base, selfHandleResponse: true },
    'LW_GW_INVALID_OPTION',
  ],
  ['selfHandleResponse not a boolean', { ...base, selfHandleResponse: 1 }, 'LW_GW_INVALID_OPTION'],
  ['service with a slash', { ...base, service: 'a/b' }, 'LW_GW_INVALID_OPTION'],
  ['metrics prefix with a dash', { ...base, metricsPrefix: 'my-gw_' }, 'LW_GW_INVALID_OPTION'],
  ['hook not a function', { ...base, on: { proxyReq: 'x' } }, 'LW_GW_INVALID_OPTION'],
  ['retry body bound negative', { ...base, retry: { maxBodyBytes: -1 } }, 'LW_GW_INVALID_OPTION'],
  ['warm-up requests negative', { ...base, warmUp: { requests: -1 } }, 'LW_GW_INVALID_OPTION'],
  [
    'warm-up connections fractional',
    { ...base, warmUp: { connectionsPerBackend: 1.5 } },
    'LW_GW_INVALID_OPTION',
  ],
  ['warm-up a number', { ...base, warmUp: 300 }, 'LW_GW_INVALID_OPTION'],
  // The message shows the value; JSON.stringify threw a TypeError on a BigInt.
  ['a BigInt backend id', { backends: [{ id: 1n, url: 'http://h' }] }, 'LW_GW_INVALID_BACKEND_ID'],
  ['a BigInt backend url', { backends: [{ id: 'a', url: 2n }] }, 'LW_GW_INVALID_BACKEND_URL'],
  // Read as {} (every default, no error) before sections had to be plain objects.
  ['a Date as a section', { ...base, healthCheck: new Date(0) }, 'LW_GW_INVALID_OPTION'],
  ['a RegExp as a section', { ...base, outlier: /x/ }, 'LW_GW_INVALID_OPTION'],
  // An array has a `join` method: taken for a cohort, it threw at the first request.
  ['an array as the load cohort', { ...base, load: { cohort: [] } }, 'LW_GW_INVALID_OPTION'],
  ['null as the load cohort', { ...base, load: { cohort: null } }, 'LW_GW_INVALID_OPTION'],
  [
    'a look-alike cohort',
    { ...base, load: { cohort: { join: () => ({}) } } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'zero answers per backend connection',
    { ...base, agent: { maxRequestsPerConnection: 0 } },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'a fractional answers-per-connection bound',
    { ...base, agent: { maxRequestsPerConnection: 1.5 } },
    'LW_GW_INVALID_OPTION',
  ],
  // MQTT 3.1.1 sends no password without a username: the broker closed the connection.
  [
    'a broker password without a username',
    { ...base, broker: { url: 'mqtt://h', password: 'p' } },
    'LW_GW_INVALID_BROKER',
  ],
  [
    'an empty embedded broker host',
    { ...base, broker: { embedded: true, host: '' } },
    'LW_GW_INVALID_OPTION',
  ],
  ...[0, 1.5, 'x', 2e6].flatMap((n): Array<[string, unknown, GatewayErrorCode]> => [
    [
      `embedded broker maxConnectionsPerAddress ${String(n)}`,
      { ...base, broker: { embedded: true, maxConnectionsPerAddress: n } },
      'LW_GW_INVALID_OPTION',
    ],
    [
      `embedded broker maxConnections ${String(n)}`,
      { ...base, broker: { embedded: true, maxConnections: n } },
      'LW_GW_INVALID_OPTION',
    ],
  ]),
  // It overwrites the header it names on every proxied answer.
  ...[
    'content-length',
    'Transfer-Encoding',
    'connection',
    'Set-Cookie',
    'location',
    'content-type',
    'x-frame-options',
    'cross-origin-opener-policy',
    'x-loadwise-error',
  ].map((h): [string, unknown, GatewayErrorCode] => [
    `decisionHeader ${h}`,
    { ...base, decisionHeader: h },
    'LW_GW_INVALID_OPTION',
  ]),
  // Compared with the path as sent, and the dashboard's asset URLs are built from it.
  ...['/_lb/st%61tus', '/_lb/tableau-de-bord-é', '/_lb/dash{1}'].flatMap(
    (p): Array<[string, unknown, GatewayErrorCode]> => [
      [`statusPath ${p}`, { ...base, statusPath: p }, 'LW_GW_INVALID_OPTION'],
      [`metricsPath ${p}`, { ...base, metricsPath: p }, 'LW_GW_INVALID_OPTION'],
      [
        `dashboard.path ${p}`,
        { ...base, dashboard: { token: 'a-dashboard-token-0123', path: p } },
        'LW_GW_INVALID_OPTION',
      ],
    ],
  ),
  [
    'two keys with one keyId',
    { ...base, keys: [key, { keyId: key.keyId, secret: Buffer.alloc(32, 2) }] },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'allowUnsigned false beside requireSignature false',
    { ...base, allowUnsigned: false, requireSignature: false },
    'LW_GW_INVALID_OPTION',
  ],
  // Its factor applies to unsigned reports only, which are refused unless allowed.
  [
    'unsignedMaxPenalty without allowUnsigned',
    { ...base, unsignedMaxPenalty: 4 },
    'LW_GW_INVALID_OPTION',
  ],
  [
    'unsignedMaxPenalty beside allowUnsigned false',
    { ...base, allowUnsigned: false, unsignedMaxPenalty: 4 },
    'LW_GW_INVALID_OPTION',
  ],
  // Past 2^31 - 1 ms Node fires a timer after 1 ms: 3e9 meant "practically never" and made
  // 700 health checks a second, or answered every queued request 503 at once.
  ...(
    [
      { broker: { url: 'mqtt://h', reconnectPeriodMs: 3e9 } },
      { broker: { url: 'mqtt://h', connectTimeoutMs: 3e9 } },
      { agent: { keepAliveMsecs: 3e9 } },
      { agent: { idleTimeoutMs: 3e9 } },
      { outlier: { baseEjectionMs: 3e9, maxEjectionMs: 3e9 } },
      { outlier: { maxEjectionMs: 3e9 } },
      { healthCheck: { path: '/h', intervalMs: 3e9 } },
      // its ±10% jitter would take the largest timer past the bound
      { healthCheck: { path: '/h', intervalMs: 2e9 } },
      { healthCheck: { path: '/h', timeoutMs: 3e9 } },
      { saturation: { queueTimeoutMs: 3e9 } },
      { overload: { sampleIntervalMs: 3e9 } },
      { maxClockSkewMs: 3e9 },
      { maxRetainedAgeMs: 3e9 },
    ] as object[]
  ).map((o): [string, unknown, GatewayErrorCode] => [
    `a timer past 2^31 - 1 ms: ${JSON.stringify(o)}`,
    { ...base, ...o },
    'LW_GW_INVALID_OPTION',
  ]),
];

describe('loadBalance options', () => {
  it.each(cases)('%s → %s', (_name, opts, code) => {
    expect(codeOf(() => loadBalance(opts as LoadBalanceOptions))).toBe(code);
  });

  it('construction errors carry no HTTP status and name the option', () => {
    try {
      resolveOptions({ ...base, requestTimeoutMs: -1 });
      throw new Error('no error');
    } catch (err) {
      expect(err).toBeInstanceOf(GatewayError);
      expect((err as GatewayError).status).toBeUndefined();
      expect((err as Error).message).toMatch(/^LW_GW_INVALID_OPTION: requestTimeoutMs must be/);
    }
  });

  it('says a range above 0 as such, not from Number.MIN_VALUE', () => {
    const backends = [{ id: 'a', url: 'http://h', weight: '2' as unknown as number }];
    expect(() => resolveOptions({ ...base, backends })).toThrow(
      /backends\[0\]\.weight must be a number in \(0, 1000000\]/,
    );
  });

  it.each([
    [{ stratgy: 'p2c' }, 'unknown option stratgy (did you mean strategy?)'],
    [
      { healthCheck: { pathh: '/h' } },
      'unknown option healthCheck.pathh (did you mean healthCheck.path?)',
    ],
    [{ retry: { maxRetry: 1 } }, 'unknown option retry.maxRetry (did you mean retry.maxRetries?)'],
    [{ warmUp: { request: 10 } }, 'unknown option warmUp.request (did you mean warmUp.requests?)'],
    [
      { broker: { url: 'mqtt://h', usrname: 'u' } },
      'unknown option broker.usrname (did you mean broker.username?)',
    ],
    [
      { clientBodyMinRate: { bytesPerSecond: 240 } },
      'unknown option clientBodyMinRate.bytesPerSecond (did you mean clientBodyMinRate.bytesPerSec?)',
    ],
    [{ zzzzzz: 1 }, 'unknown option zzzzzz'],
  ])('names an unknown key %j with its path and the nearest known one', (extra, message) => {
    expect(() => resolveOptions({ ...base, ...extra } as LoadBalanceOptions)).toThrow(
      `LW_GW_INVALID_OPTION: ${message}`,
    );
  });

  it("takes RFC 3986's sub-delimiters in statusPath, and in dashboard.path those encodeURIComponent leaves", () => {
    expect(resolveOptions({ ...base, statusPath: '/_lb/st@tus;v=1' }).statusPath).toBe(
      '/_lb/st@tus;v=1',
    );
    const dashboard = { token: 'a-dashboard-token-0123', path: "/_lb/dash'x(1)" };
    expect(resolveOptions({ ...base, dashboard }).dashboard).toMatchObject({
      path: dashboard.path,
    });
    // Its asset URLs go through encodeURIComponent: /_lb/dash%401/dashboard.js was a backend's.
    for (const path of ['/_lb/dash@1', '/_lb/ops;v=2', '/_lb/a+b', '/_lb/dash:x']) {
      expect(codeOf(() => resolveOptions({ ...base, dashboard: { ...dashboard, path } }))).toBe(
        'LW_GW_INVALID_OPTION',
      );
    }
  });

  it('takes a broker password with the user in the broker URL (mqtt.js sends it as the username)', () => {
    const broker = { url: 'mqtt://alice@127.0.0.1:1883', password: 'pw' };
    expect(codeOf(() => resolveOptions({ ...base, broker }))).toBeUndefined();
    // mqtt.js reads a%3Ab as user a with the URL's password b, over the one given.
    const decoded = { url: 'mqtt://a%3Ab@127.0.0.1:1883', password: 'pw' };
    expect(codeOf(() => resolveOptions({ ...base, broker: decoded }))).toBe('LW_GW_INVALID_BROKER');
  });

  it('takes a decision header of its own', () => {
    expect(resolveOptions({ ...base, decisionHeader: 'X-Backend' }).decisionHeader).toBe(
      'x-backend',
    );
    expect(resolveOptions({ ...base, decisionHeader: 'x-loadwise-decision' }).decisionHeader).toBe(
      'x-loadwise-decision',
    );
  });

  it('says what is wrong with a backend URL, never its password', () => {
    const bad = (url: string) => () => resolveOptions({ backends: [{ id: 'a', url }] });
    expect(bad('http://user:S3CRET@10.0.0.1:1')).toThrow(
      'LW_GW_INVALID_BACKEND_URL: backends[0].url "http://***@10.0.0.1:1": has credentials',
    );
    expect(bad('http://user:S3CRET@10.0.0.1:1')).not.toThrow(/S3CRET/);
    expect(bad('http://10.0.0.1:1/?a=1')).toThrow(/has a query or a fragment/);
  });

  it('never shows the password of a broker URL it refuses', () => {
    for (const url of ['mqtt://u:S3CRET@host:99999', 'http://u:S3CRET@broker']) {
      expect(() => resolveOptions({ ...base, broker: url })).toThrow(/u?\*\*\*@/);
      expect(() => resolveOptions({ ...base, broker: url })).not.toThrow(/S3CRET/);
    }
  });

  it.each([
    [{ password: { secret: 'S3CRET' } }, 'broker.password must be a string or a Buffer'],
    [{ password: 12345678 }, 'broker.password must be a string or a Buffer'],
    [{ key: { pem: 'S3CRET' } }, 'broker.key must be PEM text or a Buffer'],
  ])('never shows a broker secret of the wrong type (%j)', (extra, message) => {
    const opts = {
      ...base,
      broker: { url: 'mqtt://broker', ...extra },
    } as unknown as LoadBalanceOptions;
    expect(() => resolveOptions(opts)).toThrow(`${message}, got "<redacted>"`);
    expect(() => resolveOptions(opts)).not.toThrow(/S3CRET|12345678/);
  });

  it.each(['ftp://gw:p/S3CRET@broker', 'mqtt://gw:s3#S3CRET@broker:1883', 'mqtt://gw:s?S3CRET@b'])(
    'never shows the password of a URL it refuses (%s)',
    (broker) => {
      expect(() => resolveOptions({ ...base, broker })).not.toThrow(/S3CRET/);
    },
  );

  it('names the metrics with metricsPrefix', async () => {
    const lb = loadBalance({ ...base, metricsPrefix: 'gw_', healthCheck: false, overload: false });
    try {
      expect(lb.balancer.metricsRegistry.getSingleMetric('gw_picks_total')).toBeDefined();
      expect(lb.balancer.metricsRegistry.getSingleMetric('loadwise_picks_total')).toBeUndefined();
    } finally {
      await lb.close();
    }
  });

  it('scopes topics by service', () => {
    expect(resolveOptions({ ...base, service: 'users' })).toMatchObject({
      service: 'users',
      topicPrefix: 'loadwise/users',
    });
    expect(resolveOptions({ ...base, topicPrefix: 'acme', service: 'orders' }).topicPrefix).toBe(
      'acme/orders',
    );
  });

  it('fills defaults', () => {
    const o = resolveOptions(base);
    expect(o.strategy).toBe('load-aware');
    expect(o.retry).toMatchObject({
      maxRetries: 2,
      maxBodyBytes: 16_384,
      methods: ['GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE'],
    });
    expect(o.outlier).toMatchObject({ consecutiveFailures: 5, panicThresholdPercent: 50 });
    expect(o.discovery).toBeUndefined();
    expect(o.decisionHeader).toBeUndefined();
    expect(
      resolveOptions({ ...base, retry: false, healthCheck: false, overload: false }),
    ).toMatchObject({
      retry: undefined,
      healthCheck: undefined,
      overload: undefined,
    });
    expect(resolveOptions({ ...base, decisionHeader: 'X-Why' }).decisionHeader).toBe('x-why');
    // Warm-up is on by default (warm-up.ts); false turns it off.
    expect(o.warmUp).toEqual({ requests: 3_000, connectionsPerBackend: 4 });
    expect(resolveOptions({ ...base, warmUp: false }).warmUp).toBeUndefined();
    // Slow-client protection is on by default; false turns each part off.
    expect(o).toMatchObject({ clientBodyTimeoutMs: 10_000, maxInFlightPerClient: 64 });
    expect(
      resolveOptions({ ...base, clientBodyTimeoutMs: false, maxInFlightPerClient: false }),
    ).toMatchObject({ clientBodyTimeoutMs: undefined, maxInFlightPerClient: undefined });
    // Kestrel's minimum request body rate, by default; each figure can be set alone.
    expect(o.clientBodyMinRate).toEqual({ bytesPerSec: 240, graceMs: 5_000 });
    expect(resolveOptions({ ...base, clientBodyMinRate: false }).clientBodyMinRate).toBeUndefined();
    expect(
      resolveOptions({ ...base, clientBodyMinRate: { bytesPerSec: 1_000 } }).clientBodyMinRate,
    ).toEqual({ bytesPerSec: 1_000, graceMs: 5_000 });
    // Request bodies are read before dispatch by default: 64 KiB each, 64 MiB in all.
    expect(o.requestBuffering).toEqual({ maxBytes: 65_536, maxTotalBytes: 64 << 20 });
    expect(resolveOptions({ ...base, requestBuffering: false }).requestBuffering).toBeUndefined();
    expect(
      resolveOptions({ ...base, requestBuffering: { maxBytes: 1_024 } }).requestBuffering,
    ).toEqual({ maxBytes: 1_024, maxTotalBytes: 64 << 20 });
    expect(() =>
      resolveOptions({ ...base, requestBuffering: { maxBytes: 1024, maxTotalBytes: 512 } }),
    ).toThrow('requestBuffering.maxTotalBytes');
    // trustForwarded resolves to the number of trusted proxies: true is one.
    expect(o.trustForwarded).toBe(0);
    const hops = (t: boolean | number) =>
      resolveOptions({ ...base, trustForwarded: t }).trustForwarded;
    expect([hops(true), hops(false), hops(0), hops(3), hops(32)]).toEqual([1, 0, 0, 3, 32]);
    // trustHeaders: none by default; names in lower case, as Node's req.headers has them.
    expect(o.trustHeaders).toEqual([]);
    expect(
      resolveOptions({ ...base, trustForwarded: 1, trustHeaders: ['CF-Connecting-IP'] })
        .trustHeaders,
    ).toEqual(['cf-connecting-ip']);
    // WebSockets are bounded by default; false turns each bound off.
    expect(o.webSockets).toEqual({ idleTimeoutMs: 300_000, maxPerClient: 256, maxOpen: 10_000 });
    const ws = { idleTimeoutMs: false, maxPerClient: false, maxOpen: false } as const;
    expect(resolveOptions({ ...base, webSockets: ws }).webSockets).toEqual({});
  });

  it('is secure by default: unsigned refused, bounded control channel', () => {
    const o = resolveOptions(base);
    expect([o.allowUnsigned, o.unsignedMaxPenalty]).toEqual([false, 2]);
    expect(o.messageLimits).toEqual({
      perBackendPerSec: 20,
      perBackendBurst: 40,
      totalPerSec: 20000,
      totalBurst: 20000,
      maxPacketBytes: 65536,
    });
    // The legacy spelling of the same choice.
    expect(resolveOptions({ ...base, keys: [key], requireSignature: false }).allowUnsigned).toBe(
      true,
    );
    // Its factor given with the choice that uses it, either spelling.
    expect(
      resolveOptions({ ...base, allowUnsigned: true, unsignedMaxPenalty: 4 }).unsignedMaxPenalty,
    ).toBe(4);
    expect(
      resolveOptions({ ...base, keys: [key], requireSignature: false, unsignedMaxPenalty: 3 })
        .unsignedMaxPenalty,
    ).toBe(3);
    expect(
      resolveOptions({ ...base, messageLimits: { totalPerSec: 50 } }).messageLimits.totalBurst,
    ).toBe(50);
  });

  it('accepts discovery without configured backends', () => {
    const o = resolveOptions({
      backends: [],
      keys: [key],
      discovery: { allowedRanges: ['127.0.0.0/8', '::1/128'] },
    });
    expect(o.discovery).toEqual({
      allowedRanges: ['127.0.0.0/8', '::1/128'],
      allowedPorts: [],
      maxBackends: 100,
      maxWeight: 1,
      forgetAfterMs: 600_000,
      requireTls: false,
    });
    // A private CA says the backends speak TLS: http: registrations are refused.
    const ca = '-----BEGIN CERTIFICATE-----\n(a private CA)\n-----END CERTIFICATE-----\n';
    const tls = resolveOptions({
      backends: [],
      keys: [key],
      backendTls: { ca },
      discovery: { allowedRanges: ['10.0.0.0/8'] },
    });
    expect(tls.discovery?.requireTls).toBe(true);
  });
});

describe('the defaults table and docs/gateway.md', () => {
  const docs = readFileSync(path.resolve(__dirname, '../../../docs/gateway.md'), 'utf8');
  /** The options table's row of a top-level option, without digit grouping and `?` marks. */
  function row(option: string): string {
    const line = docs.split('\n').find((l) => l.startsWith(`| \`${option}\``)) ?? '';
    return line.replace(/(\d) (\d)/g, '$1$2').replace(/\?:/g, ':');
  }
  const shown = (value: unknown): string[] =>
    Array.isArray(value)
      ? [value.length === 0 ? '[]' : value.join(' ')]
      : typeof value === 'string'
        ? [`'${value}'`, `\`${value}\``]
        : [String(value)];
  type Leaf = readonly [option: string, key: string | undefined, value: unknown];
  const leaves = Object.entries(DEFAULTS as Record<string, unknown>).flatMap(
    ([option, value]): Leaf[] =>
      typeof value === 'object' && value !== null && !Array.isArray(value)
        ? Object.entries(value).map(([key, v]): Leaf => [
            option === 'backend' ? 'backends' : option,
            key,
            v,
          ])
        : [[option, undefined, value]],
  );

  // Functions (now, random) are named in the row by hand: a monotonic clock, `Math.random`.
  it.each(leaves.filter(([, , v]) => typeof v !== 'function'))(
    'shows %s %s',
    (option, key, value) => {
      const text = row(option);
      const forms = shown(value).map((v) => (key === undefined ? v : `${key}: ${v}`));
      expect(forms.some((f) => text.includes(f)) ? text : forms).toBe(text);
    },
  );
});

describe('a clientId in the broker URL', () => {
  it('is what mqtt.js connects with, over the id it is given: why the gateway refuses it', () => {
    const client = mqtt.connect('mqtt://127.0.0.1:9?clientId=from-url', {
      clientId: 'given',
      reconnectPeriod: 0,
      connectTimeout: 100,
    });
    client.on('error', () => {});
    expect(client.options.clientId).toBe('from-url');
    client.end(true);
  });
});
