/**
 * TLS to https backends, against real https servers with certificates made by
 * openssl for this run: the name a backend's certificate is verified against
 * comes from its configured URL (or `backendTls.servername`), never from the
 * client's Host header, for requests, WebSocket upgrades, the warm-up's
 * preconnects and the active health checks; `backendTls` brings a private
 * CA, mutual TLS and the override of that name, and is checked at
 * construction.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { createSecureServer } from 'node:http2';
import { createServer as createHttpsServer, type ServerOptions } from 'node:https';
import { createServer as createNetServer, type Socket } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { TLSSocket } from 'node:tls';
import { WebSocketServer } from 'ws';
import { loadBalance, type BackendTlsOptions } from '@loadwise/gateway-plugin';
import { eventually } from '../kit/fleet';
import { quietLogger, startGateway, startLocalGateway, type TestGateway } from '../kit/gateway';
import { listen, send, type TestServer } from '../kit/http';
import { canRunOpenssl, createPki, type Pki } from '../kit/pki';
import { wsExchange } from '../kit/ws-client';

interface HttpsBackend extends TestServer {
  /** The SNI of each TLS connection the backend accepted, in order (false: none sent). */
  handshakes: Array<string | false | null>;
  /** The User-Agent of each request, in order. */
  agents: string[];
  wss: WebSocketServer;
}

/**
 * An https backend that answers `{ host }` (the Host header it got) and echoes
 * WebSocket messages; `/healthz` answers 200 too.
 */
async function startHttpsBackend(tls: ServerOptions): Promise<HttpsBackend> {
  const handshakes: Array<string | false | null> = [];
  const agents: string[] = [];
  const server = createHttpsServer(tls, (req: IncomingMessage, res: ServerResponse) => {
    agents.push(req.headers['user-agent'] ?? '');
    req.resume();
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ host: req.headers.host }));
  });
  server.on('secureConnection', (s: TLSSocket) => handshakes.push(s.servername));
  const wss = new WebSocketServer({ server });
  wss.on('connection', (socket) => socket.on('message', (d) => socket.send(`echo ${String(d)}`)));
  // An https.Server is a tls.Server with http.Server's request handling: listen()
  // needs only its 'connection' events, listen() and close().
  const s = await listen(server as unknown as Server);
  return {
    ...s,
    url: `https://127.0.0.1:${s.port}`,
    handshakes,
    agents,
    wss,
    close: async () => {
      for (const c of wss.clients) c.terminate();
      wss.close();
      await s.close();
    },
  };
}

/** Hosts a client may send, none of them the backend's. */
const HOSTS = ['evil.example', 'a.example', 'b.example:8443', '[::1]', '10.0.0.1', 'c.example'];

(canRunOpenssl ? describe : describe.skip)('TLS to https backends', () => {
  let dir: string;
  let pki: Pki;
  let ca: Buffer;
  let gw: TestGateway | undefined;
  const backends: HttpsBackend[] = [];

  /** An https backend with the certificate `<name>` of the run's PKI; closed after each test. */
  async function backend(name: string, extra: ServerOptions = {}): Promise<HttpsBackend> {
    const b = await startHttpsBackend({
      cert: pki.read(`${name}.pem`),
      key: pki.read(`${name}.key`),
      ...extra,
    });
    backends.push(b);
    return b;
  }

  const gateway = (url: string, backendTls?: BackendTlsOptions, more = {}) =>
    startLocalGateway({ backends: [{ id: 'b', url }], backendTls, ...more });

  /** Accepts TCP connections and never answers a ClientHello: a hung TLS terminator. */
  async function stalledTls(): Promise<TestServer & { held: Socket[] }> {
    const held: Socket[] = [];
    const mute = createNetServer((s) => {
      held.push(s);
      s.on('error', () => {});
    });
    const s = await listen(mute as unknown as Server);
    return {
      ...s,
      held,
      close: async () => {
        for (const c of held) c.destroy();
        await s.close();
      },
    };
  }

  /** Round robin over the stalled server (`stalled`) and a good backend (`b`), connect timeout 200 ms. */
  async function besideStalled(port: number, requestTimeoutMs: number): Promise<TestGateway> {
    const b = await backend('ip');
    return startLocalGateway({
      backends: [
        { id: 'stalled', url: `https://127.0.0.1:${port}` },
        { id: 'b', url: b.url },
      ],
      backendTls: { ca },
      strategy: 'round-robin',
      connectTimeoutMs: 200,
      requestTimeoutMs,
      outlier: { consecutiveFailures: 100 },
    });
  }

  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'lw-backend-tls-'));
    pki = createPki(dir);
    pki.ca('ca');
    pki.issue('ip', '127.0.0.1', 'ca', 'IP:127.0.0.1');
    pki.issue('dns', 'backend.internal', 'ca', 'DNS:backend.internal');
    pki.issue('gateway', 'gateway', 'ca');
    ca = pki.read('ca.pem');
  });
  afterEach(async () => {
    await gw?.close();
    gw = undefined;
    await Promise.all(backends.splice(0).map((b) => b.close()));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("verifies the backend's URL, not the client's Host: any Host is served on one pooled connection", async () => {
    const b = await backend('ip');
    gw = await gateway(b.url, { ca });
    for (const host of [...HOSTS, ...HOSTS]) {
      const r = await send(`${gw.url}/`, { headers: { host } });
      expect([host, r.status, r.headers['x-loadwise-error']]).toEqual([host, 200, undefined]);
      // The client's Host still reaches the backend (changeOrigin is false).
      expect(r.json<{ host: string }>().host).toBe(host);
    }
    expect(gw.backend('b')).toMatchObject({ state: 'healthy', ejections: 0, failuresTotal: 0 });
    // One connection, without SNI: an IP address is never sent as a server name.
    expect(b.handshakes).toEqual([false]);
  });

  it('verifies the same name on a WebSocket upgrade', async () => {
    const b = await backend('ip');
    gw = await gateway(b.url, { ca });
    for (const host of HOSTS.slice(0, 3)) {
      expect(await wsExchange(`ws://127.0.0.1:${gw.port}/`, { host })).toEqual({
        echo: 'echo ping',
      });
    }
    expect(gw.backend('b')).toMatchObject({ ejections: 0, failuresTotal: 0 });
    expect(b.handshakes.every((sni) => sni === false)).toBe(true);
  });

  /** A POST: retried only when nothing of it can have reached the backend. */
  const post = (url: string, headers: Record<string, string> = {}) =>
    send(`${url}/`, { method: 'POST', body: 'x', headers });

  it('refuses a backend whose certificate it cannot verify (no ca): 503 with no other, counted', async () => {
    const b = await backend('ip');
    gw = await gateway(b.url);
    // The handshake failed, so nothing was sent: as for a refused connection, "no backend
    // could be reached" (503 + Retry-After), for a POST as for a GET.
    const r = await post(gw.url);
    expect([r.status, r.headers['x-loadwise-error']]).toEqual([503, 'LW_GW_NO_BACKEND']);
    expect(gw.backend('b').failuresTotal).toBeGreaterThan(0);
    expect(b.agents).toEqual([]);
  });

  it('sends a POST whose backend failed the certificate check to another backend', async () => {
    // A certificate for backend.internal, the backend addressed by IP and no servername:
    // refused in the handshake, before a byte of the request. Before, a POST got 502
    // (maybe sent) every other request until the backend was ejected.
    const refused = await backend('dns');
    const good = await backend('ip');
    gw = await startLocalGateway({
      backends: [
        { id: 'refused', url: refused.url },
        { id: 'good', url: good.url },
      ],
      backendTls: { ca },
      strategy: 'round-robin',
      outlier: { consecutiveFailures: 100 },
    });
    for (let i = 0; i < 4; i++) {
      const r = await post(gw.url);
      expect([i, r.status, r.headers['x-loadwise-error']]).toEqual([i, 200, undefined]);
    }
    expect(refused.agents).toEqual([]);
    expect(good.agents).toHaveLength(4);
    expect(gw.backend('refused').failuresTotal).toBeGreaterThanOrEqual(1);
  });

  it('offers HTTP/1.1 alone by ALPN: a backend serving only HTTP/2 is refused in the handshake and skipped', async () => {
    const h2 = createSecureServer({ cert: pki.read('ip.pem'), key: pki.read('ip.key') });
    let streams = 0;
    h2.on('stream', (stream) => {
      streams++;
      stream.respond({ ':status': 200 });
      stream.end('h2');
    });
    const only2 = await listen(h2 as unknown as Server);
    try {
      const good = await backend('ip');
      gw = await startLocalGateway({
        backends: [
          { id: 'h2', url: `https://127.0.0.1:${only2.port}` },
          { id: 'good', url: good.url },
        ],
        backendTls: { ca },
        strategy: 'round-robin',
        outlier: { consecutiveFailures: 100 },
      });
      // Offered no protocol, Node's HTTP/2 server answered each request with an HTTP/1
      // 403 ("Missing ALPN Protocol"), which the gateway relayed as the backend's answer.
      for (const method of ['GET', 'POST', 'GET', 'POST']) {
        const r = await send(`${gw.url}/`, { method, body: method === 'POST' ? 'x' : undefined });
        expect([method, r.status, r.headers['x-loadwise-error']]).toEqual([method, 200, undefined]);
      }
      expect(streams).toBe(0);
      expect(good.agents).toHaveLength(4);
    } finally {
      await only2.close();
    }
  });

  it('connects unverified with rejectUnauthorized: false, whatever http-proxy asks per request', async () => {
    // http-proxy sets rejectUnauthorized: true on every request to an https target; the
    // pool's own options win (Agent.createSocket), so the setting reaches the connection.
    const b = await backend('dns');
    gw = await gateway(b.url, { rejectUnauthorized: false });
    expect((await send(`${gw.url}/`, { headers: { host: 'evil.example' } })).status).toBe(200);
  });

  it('presents its client certificate to a backend that requires one (mutual TLS)', async () => {
    const b = await backend('ip', { ca, requestCert: true, rejectUnauthorized: true });
    gw = await gateway(b.url, { ca, cert: pki.read('gateway.pem'), key: pki.read('gateway.key') });
    for (const host of HOSTS.slice(0, 3))
      expect((await send(`${gw.url}/`, { headers: { host } })).status).toBe(200);
    expect(b.handshakes).toHaveLength(1);
    await gw.close();

    // TLS 1.3: the backend refuses the missing certificate with an alert after the
    // gateway's side of the handshake is done, the request perhaps on its way; refused, the
    // handshake handed it to no application: nothing sent (any method may go elsewhere),
    // and with no other backend 503 + Retry-After. Before: 502, as if the POST had run.
    gw = await gateway(b.url, { ca });
    const r = await post(gw.url);
    expect([r.status, r.headers['x-loadwise-error']]).toEqual([503, 'LW_GW_NO_BACKEND']);
    expect(r.headers['retry-after']).toBeDefined();
    expect(b.agents).toHaveLength(3);
  });

  it('verifies backendTls.servername, and sends it as SNI, for a backend addressed by IP', async () => {
    const b = await backend('dns');
    gw = await gateway(b.url, { ca, servername: 'backend.internal' });
    for (const host of HOSTS.slice(0, 3))
      expect((await send(`${gw.url}/`, { headers: { host } })).status).toBe(200);
    expect(b.handshakes).toEqual(['backend.internal']);
    await gw.close();

    // Without it the certificate, which names no IP, is verified against the IP and refused.
    gw = await gateway(b.url, { ca });
    const r = await post(gw.url, { host: 'backend.internal' });
    expect([r.status, r.headers['x-loadwise-error']]).toEqual([503, 'LW_GW_NO_BACKEND']);
    expect(b.agents).toHaveLength(3);
  });

  it('runs the active health checks with the same trust and name', async () => {
    const b = await backend('dns');
    const healthCheck = { path: '/healthz', intervalMs: 20, unhealthyThreshold: 1 };
    gw = await gateway(b.url, { ca, servername: 'backend.internal' }, { healthCheck });
    const checks = () => b.agents.filter((a) => a === 'loadwise-gateway-health-check').length;
    await eventually(() => checks() >= 3, 5_000, 'three health checks');
    expect(gw.backend('b').state).toBe('healthy');
    expect(new Set(b.handshakes)).toEqual(new Set(['backend.internal']));
    await gw.close();

    // A check that cannot verify the backend fails, and takes it out.
    gw = await gateway(b.url, { ca }, { healthCheck });
    const started = gw;
    await eventually(() => started.backend('b').state === 'down', 5_000, 'backend down');
    // Why, in its reason: the certificate's error, not only "failed".
    expect(started.backend('b').stateReason).toMatch(
      /^active health check failed \((ERR_TLS_CERT_ALTNAME_INVALID|[A-Z_]*CERT[A-Z_]*)\)$/,
    );
  });

  it("warms the backend's pool with verified connections that any Host then reuses", async () => {
    const b = await backend('ip');
    gw = await startGateway({
      backends: [{ id: 'b', url: b.url }],
      backendTls: { ca },
      // A long interval (22 days: the first check comes at a random point of it): no
      // check runs during the test, only the warm-up's preconnects.
      healthCheck: { path: '/healthz', intervalMs: 1_900_000_000 },
      warmUp: { requests: 0, connectionsPerBackend: 2 },
    });
    expect(b.agents).toEqual(['loadwise-gateway-preconnect', 'loadwise-gateway-preconnect']);
    expect(b.handshakes).toEqual([false, false]);
    for (const host of HOSTS)
      expect((await send(`${gw.url}/`, { headers: { host } })).status).toBe(200);
    expect(b.handshakes).toHaveLength(2);
  });

  it('counts a TLS handshake that stalls as a connect timeout, retried on another backend', async () => {
    const stalled = await stalledTls();
    try {
      gw = await besideStalled(stalled.port, 20_000);
      // Before: the connect timer stopped at the TCP connect, and the request waited
      // requestTimeoutMs for a 504 that was never retried.
      for (const p of ['/a', '/b']) {
        const r = await send(`${gw.url}${p}`);
        expect([p, r.status, r.headers['x-loadwise-error']]).toEqual([p, 200, undefined]);
      }
      expect(gw.backend('stalled')).toMatchObject({ inFlight: 0 });
      expect(gw.backend('stalled').failuresTotal).toBeGreaterThanOrEqual(1);
      expect(await gw.lb.balancer.metricsRegistry.metrics()).toMatch(
        /^loadwise_retries_total\{backend="stalled"\} [1-9]/m,
      );
    } finally {
      await stalled.close();
    }
  });

  it('times the connection of a WebSocket upgrade too: a stalled handshake is retried on another backend', async () => {
    const stalled = await stalledTls();
    try {
      gw = await besideStalled(stalled.port, 10_000);
      // Before: only requestTimeoutMs ran, and the upgrade picked for the stalled backend
      // got 504 after it, never retried.
      const startedMs = Date.now();
      for (let i = 0; i < 2; i++)
        expect(await wsExchange(`ws://127.0.0.1:${gw.port}/`)).toEqual({ echo: 'echo ping' });
      expect(Date.now() - startedMs).toBeLessThan(10_000);
      expect(stalled.held.length).toBeGreaterThanOrEqual(1);
      expect(gw.backend('stalled').failuresTotal).toBeGreaterThanOrEqual(1);
      expect(await gw.lb.balancer.metricsRegistry.metrics()).toMatch(
        /^loadwise_retries_total\{backend="stalled"\} [1-9]/m,
      );
    } finally {
      await stalled.close();
    }
  });

  describe('options', () => {
    const base = { backends: [{ id: 'b', url: 'https://127.0.0.1:8443' }] };
    const construct = (backendTls: unknown) => () =>
      loadBalance({ ...base, backendTls } as Parameters<typeof loadBalance>[0]);

    it.each([
      [
        { cert: 'CERT' },
        'LW_GW_INVALID_OPTION: backendTls.key must be given with backendTls.cert (mutual TLS needs both), got undefined',
      ],
      [
        { key: 'KEY' },
        'LW_GW_INVALID_OPTION: backendTls.cert must be given with backendTls.key (mutual TLS needs both), got undefined',
      ],
      [
        { ca: 42 },
        'LW_GW_INVALID_OPTION: backendTls.ca must be PEM text, a Buffer or an array of them, got 42',
      ],
      [
        { ca: ['PEM', 1] },
        'LW_GW_INVALID_OPTION: backendTls.ca must be PEM text, a Buffer or an array of them, got ["PEM",1]',
      ],
      [
        { cert: 'CERT', key: { pem: 'secret key text' } },
        'LW_GW_INVALID_OPTION: backendTls.key must be PEM text or a Buffer, got "<redacted>"',
      ],
      [
        { servername: '127.0.0.1' },
        'LW_GW_INVALID_OPTION: backendTls.servername must be a DNS name (not an IP address, no trailing dot), got "127.0.0.1"',
      ],
      [
        { servername: '' },
        'LW_GW_INVALID_OPTION: backendTls.servername must be a DNS name (not an IP address, no trailing dot), got ""',
      ],
      [
        { rejectUnauthorized: 'no' },
        'LW_GW_INVALID_OPTION: backendTls.rejectUnauthorized must be a boolean, got "no"',
      ],
      [
        { servrname: 'backend.internal' },
        'LW_GW_INVALID_OPTION: unknown option backendTls.servrname (did you mean backendTls.servername?)',
      ],
      ['ca.pem', 'LW_GW_INVALID_OPTION: backendTls must be an object, got "ca.pem"'],
    ])('refuses %j', (backendTls, message) => {
      expect(construct(backendTls)).toThrow(message);
    });

    it('refuses material Node cannot use, at construction, naming no part of the key', async () => {
      // Each failed every connection; the first, in the warm-up, ended the process.
      const cases: [Record<string, unknown>, RegExp][] = [
        [
          { cert: pki.read('gateway.pem'), key: pki.read('ip.key') },
          /^LW_GW_INVALID_OPTION: backendTls: .*ERR_OSSL_X509_KEY_VALUES_MISMATCH: the key is not the certificate's/,
        ],
        [
          { cert: pki.file('gateway.pem'), key: pki.file('gateway.key') },
          /^LW_GW_INVALID_OPTION: backendTls: the certificate, key or CA cannot be used/,
        ],
        [
          // An EC key beside an RSA certificate: OpenSSL compares a key with a certificate
          // of its own type only, so it passed, and no client certificate was ever sent.
          {
            cert: pki.read('gateway.pem'),
            key: generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
              type: 'pkcs8',
              format: 'pem',
            }),
          },
          /^LW_GW_INVALID_OPTION: backendTls: .*the key is not the certificate's/,
        ],
        [
          { ca: pki.file('ca.pem') },
          /^LW_GW_INVALID_OPTION: backendTls: the CA holds no PEM certificate .*a file name where its contents belong/,
        ],
      ];
      for (const [backendTls, message] of cases) {
        let err: Error | undefined;
        try {
          construct(backendTls)();
        } catch (e) {
          err = e as Error;
        }
        expect(err?.message).toMatch(message);
        expect(err?.message).not.toContain('PRIVATE KEY');
      }
      const usable = construct({
        ca,
        cert: pki.read('gateway.pem'),
        key: pki.read('gateway.key'),
      })();
      await usable.close();
    });

    it('warns once that rejectUnauthorized: false verifies nothing', async () => {
      const warnings: string[] = [];
      const lb = loadBalance({
        ...base,
        backendTls: { rejectUnauthorized: false },
        healthCheck: false,
        warmUp: false,
        overload: false,
        logger: { ...quietLogger, warn: (_fields, msg) => warnings.push(String(msg)) },
      });
      await lb.close({ graceMs: 0 });
      expect(warnings).toEqual([expect.stringContaining('backendTls.rejectUnauthorized is false')]);
    });
  });
});
