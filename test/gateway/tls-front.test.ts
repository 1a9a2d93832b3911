/**
 * A gateway that terminates TLS itself: `https.createServer({ key, cert,
 * ...gatewayServerOptions() }, app)` with the balancer in the app, as
 * docs/gateway.md allows. Forwarding headers say https; and an answer given
 * before the whole upload (a backend that resets mid-upload: 502) reaches a
 * client that sends its whole body before it reads. Over TLS the answer's end
 * came before the backend request's close, the body pump had paused the
 * request for that dead backend request, and the lingering close read nothing:
 * the client's upload stalled, and after 5 s the connection was reset with the
 * 502 unread (Python's requests: SSLEOFError in 5 of 5 runs, 0 over plain http).
 */
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import net, { type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import express from 'express';
import {
  gatewayServerOptions,
  loadBalance,
  routeUpgrades,
  type LoadBalanceOptions,
} from '@loadwise/gateway-plugin';
import { quietLogger } from '../kit/gateway';
import { listen, startBackend } from '../kit/http';
import { canRunOpenssl, createPki, type Pki } from '../kit/pki';
import { uploadThenRead } from '../kit/raw-http';
import { stalledUpgradeBackend, upgradeUntilEnd } from '../kit/ws-server';

const suite = canRunOpenssl ? describe : describe.skip;

suite('a gateway terminating TLS', () => {
  let dir: string;
  let pki: Pki;
  beforeAll(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'lw-tls-front-'));
    pki = createPki(dir);
    pki.ca('ca');
    pki.issue('front', '127.0.0.1', 'ca', 'IP:127.0.0.1');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** The balancer behind an https server of its own, on 127.0.0.1, port 0. */
  async function httpsGateway(
    backendUrl: string,
    extra: Partial<LoadBalanceOptions> = {},
  ): Promise<{
    port: number;
    close(): Promise<void>;
  }> {
    const lb = loadBalance({
      backends: [{ id: 'b', url: backendUrl }],
      logger: quietLogger,
      warmUp: false,
      overload: false,
      healthCheck: false,
      ...extra,
    });
    const app = express();
    app.use(lb);
    const server: HttpsServer = createHttpsServer(
      { key: pki.read('front.key'), cert: pki.read('front.pem'), ...gatewayServerOptions() },
      app,
    );
    server.on('upgrade', routeUpgrades(app));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    await lb.ready();
    return {
      port: (server.address() as AddressInfo).port,
      async close() {
        server.close();
        server.closeAllConnections();
        await lb.close({ graceMs: 0 });
      },
    };
  }

  it('says https in X-Forwarded-Proto, whatever the client wrote', async () => {
    const echo = await startBackend('echo', (req, res) => res.end(JSON.stringify(req.headers)));
    const gw = await httpsGateway(echo.url);
    try {
      const answer = await tlsExchange(
        gw.port,
        'GET /x HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n',
      );
      expect(answer.text).toMatch(/^HTTP\/1\.1 200 /);
      const sent = JSON.parse(answer.text.slice(answer.text.indexOf('\r\n\r\n') + 4)) as Record<
        string,
        string
      >;
      expect(sent['x-forwarded-proto']).toBe('https');
      expect(sent['x-forwarded-port']).toBe(String(gw.port));
    } finally {
      await gw.close();
      await echo.close();
    }
  });

  it("cuts an upgrade's stalled non-101 answer with a reset, never a clean end", async () => {
    // A chunked 403 page, its first chunk only: framed by the close on the client's side.
    // A TLS socket has no reset of its own; destroy() alone sent a FIN without close_notify,
    // which Node's clients read as the end of the (truncated) page.
    const backend = await stalledUpgradeBackend();
    const gw = await httpsGateway(backend.url, { requestTimeoutMs: 300 });
    try {
      const client = tls.connect({ port: gw.port, host: '127.0.0.1', rejectUnauthorized: false });
      const { ended, got } = await upgradeUntilEnd(client);
      expect(ended).toBe('ECONNRESET');
      expect(got).toMatch(/^HTTP\/1\.1 403 Forbidden\r\n[\s\S]*denied/);
    } finally {
      await gw.close();
      await backend.close();
    }
  });

  it('delivers the 502 of a backend reset mid-upload to a client that sends all its body first', async () => {
    // Reads 1 MiB of the upload, then resets its connection.
    const resetter = await listen(
      net.createServer((socket) => {
        let got = 0;
        socket.on('error', () => undefined);
        socket.on('data', (d: Buffer) => {
          got += d.length;
          if (got >= 1 << 20) socket.resetAndDestroy();
        });
      }) as never,
    );
    const gw = await httpsGateway(resetter.url);
    try {
      for (let run = 0; run < 2; run++) {
        const client = tls.connect({ port: gw.port, host: '127.0.0.1', rejectUnauthorized: false });
        const outcome = await uploadThenRead(client, 32 << 20);
        expect(outcome.answer).toMatch(
          /^HTTP\/1\.1 502 [^]*x-loadwise-error: LW_GW_UPSTREAM_FAILED/i,
        );
      }
    } finally {
      await gw.close();
      await resetter.close();
    }
  }, 30_000);
});

/** Sends `request` over TLS; the bytes that came back once the server closed. */
function tlsExchange(port: number, request: string): Promise<{ text: string }> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false }, () =>
      s.write(request),
    );
    let text = '';
    s.setEncoding('latin1');
    s.on('data', (d: string) => (text += d));
    s.on('error', reject);
    s.on('close', () => resolve({ text }));
  });
}
