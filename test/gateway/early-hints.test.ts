/**
 * 103 Early Hints from a backend reach the client (http-proxy relays no 1xx),
 * their Link headers only, and never to an HTTP/1.0 client; a hint Node's
 * validator refuses is dropped, not a crash. Real servers, raw sockets.
 */
import { createServer as createNetServer } from 'node:net';
import { createServer, type Server } from 'node:http';
import type { LoadBalancerMiddleware } from '@loadwise/gateway-plugin';
import { listen, type TestServer } from '../kit/http';
import { rawExchange } from '../kit/raw-http';
import { expressGateway } from '../kit/gateway';

const servers: TestServer[] = [];
afterEach(async () => {
  for (const s of servers.splice(0).reverse()) await s.close();
});

/** A backend that sends a 103 with a Link (and a header that is not one), then its answer. */
async function hintingBackend(): Promise<TestServer> {
  const s = await listen(
    createServer((_req, res) => {
      res.writeEarlyHints({ link: '</app.css>; rel=preload; as=style', 'x-internal': 'secret' });
      setTimeout(() => res.end('ok'), 20);
    }),
  );
  servers.push(s);
  return s;
}

/** A backend that answers every request with these bytes. */
async function rawBackend(answer: string): Promise<TestServer> {
  const raw = createNetServer((sock) => {
    sock.on('error', () => {});
    sock.once('data', () => sock.write(answer));
  });
  const backend = await listen(raw as unknown as Server);
  servers.push(backend);
  return backend;
}

async function gateway(url: string): Promise<TestServer & { lb: LoadBalancerMiddleware }> {
  const gw = await expressGateway(url);
  servers.push(gw);
  return gw;
}

describe('103 Early Hints', () => {
  it('reaches an HTTP/1.1 client before the answer, with its Link only', async () => {
    const gw = await gateway((await hintingBackend()).url);
    const r = await rawExchange(gw.port, 'GET /page HTTP/1.1\r\nHost: a\r\n\r\n', {
      responses: 1,
    });
    expect(r.interim).toEqual([103]);
    const hint = r.raw.slice(0, r.raw.indexOf('\r\n\r\n'));
    expect(hint).toMatch(/^HTTP\/1\.1 103 Early Hints\r\n/);
    expect(hint.toLowerCase()).toContain('link: </app.css>; rel=preload; as=style');
    expect(hint.toLowerCase()).not.toContain('x-internal');
    expect([r.responses[0]?.status, r.responses[0]?.body]).toEqual([200, 'ok']);
  });

  it('relays every Link of a hint: repeated headers and a comma-separated list', async () => {
    const gw = await gateway(
      (
        await rawBackend(
          'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload; as=style\r\n' +
            'Link: </b.js>; rel=preload; as=script, </c.woff2>; rel=preload; as=font\r\n\r\n' +
            'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
        )
      ).url,
    );
    const r = await rawExchange(gw.port, 'GET /page HTTP/1.1\r\nHost: a\r\n\r\n', {
      responses: 1,
    });
    expect(r.interim).toEqual([103]);
    const hint = r.raw.slice(0, r.raw.indexOf('\r\n\r\n')).toLowerCase();
    for (const uri of ['</a.css>', '</b.js>', '</c.woff2>']) expect(hint).toContain(uri);
    expect([r.responses[0]?.status, r.responses[0]?.body]).toEqual([200, 'ok']);
  });

  it('relays two hints a request at most: a backend sending them without end costs nothing', async () => {
    const hint = 'HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload; as=style\r\n\r\n';
    const gw = await gateway(
      (await rawBackend(hint.repeat(500) + 'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')).url,
    );
    const r = await rawExchange(gw.port, 'GET /page HTTP/1.1\r\nHost: a\r\n\r\n', {
      responses: 1,
    });
    expect(r.interim).toEqual([103, 103]);
    expect([r.responses[0]?.status, r.responses[0]?.body]).toEqual([200, 'ok']);
  });

  it('is not sent to an HTTP/1.0 client', async () => {
    const gw = await gateway((await hintingBackend()).url);
    const r = await rawExchange(gw.port, 'GET /page HTTP/1.0\r\nHost: a\r\n\r\n');
    expect(r.interim).toEqual([]);
    expect([r.responses[0]?.status, r.responses[0]?.body]).toEqual([200, 'ok']);
  });

  it('drops a hint whose Link Node refuses, and serves the answer', async () => {
    const backend = await rawBackend(
      'HTTP/1.1 103 Early Hints\r\nLink: not a link\r\n\r\n' +
        'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok',
    );
    const gw = await gateway(backend.url);
    const r = await rawExchange(gw.port, 'GET /page HTTP/1.1\r\nHost: a\r\n\r\n', {
      responses: 1,
    });
    expect(r.interim).toEqual([]);
    expect([r.responses[0]?.status, r.responses[0]?.body]).toEqual([200, 'ok']);
  });
});
