import http, { type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type Request, type Response } from 'express';
import { loadBalance } from '../load-balance';
import { GatewayError } from '../errors';
import { EXPRESS_REQUEST_FIELDS, gatewayServerOptions } from './server-classes';

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

async function close(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}

function get(
  port: number,
  path: string,
): Promise<{ status: number; message: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode!, message: res.statusMessage, body }));
      })
      .on('error', reject);
  });
}

/**
 * A server on gatewayServerOptions() that records the own keys of each request and response
 * as Node hands them to the app, before Express switches their prototypes.
 */
function recordingServer(app: express.Express, requestFields?: string[]) {
  const before = new WeakMap<object, string[]>();
  const server = http.createServer(
    gatewayServerOptions(requestFields ? { requestFields } : {}),
    (req, res) => {
      before.set(req, Object.keys(req));
      before.set(res, Object.keys(res));
      app(req, res);
    },
  );
  return { server, before };
}

const added = (obj: object, before: string[] | undefined): string[] =>
  Object.keys(obj).filter((k) => !(before ?? []).includes(k));

describe('gatewayServerOptions', () => {
  it('Express adds no field to a request or response after the app receives them', async () => {
    // What the classes are for: a field added after Express's prototype switch gives the
    // object maps of its own (docs/gateway.md, "The gateway's server"). If a new Express
    // version adds a field, this names it.
    const app = express();
    const { server, before } = recordingServer(app);
    let report: (x: { req: string[]; res: string[] }) => void = () => undefined;
    const seen = new Promise<{ req: string[]; res: string[] }>((resolve) => (report = resolve));
    const router = express.Router();
    router.get('/items/:id', (req: Request, res: Response) => {
      res.on('finish', () =>
        setImmediate(() =>
          report({
            req: added(req, before.get(req)),
            res: added(res, before.get(res)),
          }),
        ),
      );
      res.status(201).json({ id: req.params.id, q: req.query.q, base: req.baseUrl });
    });
    app.use('/api', router);
    const port = await listen(server);
    try {
      const r = await get(port, '/api/items/7?q=x');
      expect(r.status).toBe(201);
      expect(JSON.parse(r.body)).toEqual({ id: '7', q: 'x', base: '/api' });
      expect(await seen).toEqual({ req: [], res: [] });
    } finally {
      await close(server);
    }
  });

  it("Node's own classes do get fields added after construction (the control)", async () => {
    const app = express();
    let addedToReq: string[] = [];
    app.use((req: Request, res: Response) => {
      addedToReq = added(req, before.get(req));
      res.end('ok');
    });
    const before = new WeakMap<object, string[]>();
    const server = http.createServer((req, res) => {
      before.set(req, Object.keys(req));
      app(req, res);
    });
    const port = await listen(server);
    try {
      await get(port, '/x');
      expect(addedToReq).toEqual(expect.arrayContaining(['next', 'baseUrl', 'originalUrl']));
    } finally {
      await close(server);
    }
  });

  it('leaves what Express and Node read unchanged: query getter, defaults, 404, statusMessage', async () => {
    const app = express();
    app.get('/q', (req: Request, res: Response) => {
      res.json({
        query: req.query,
        locals: typeof res.locals,
        statusCode: res.statusCode,
        originalUrl: req.originalUrl,
      });
    });
    const server = http.createServer({ ...gatewayServerOptions() }, app);
    const port = await listen(server);
    try {
      const ok = await get(port, '/q?a=1&b=2');
      expect(ok.status).toBe(200);
      expect(ok.message).toBe('OK');
      expect(JSON.parse(ok.body)).toEqual({
        query: { a: '1', b: '2' },
        locals: 'object',
        statusCode: 200,
        originalUrl: '/q?a=1&b=2',
      });
      const missing = await get(port, '/nothing');
      expect(missing.status).toBe(404);
      expect(missing.message).toBe('Not Found');
    } finally {
      await close(server);
    }
  });

  it('serves a loadBalance() gateway: requests reach the backend and come back whole', async () => {
    const backend = http.createServer((req: IncomingMessage, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => res.end(`${req.method} ${req.url} ${body}`));
    });
    const backendPort = await listen(backend);
    const lb = loadBalance({
      backends: [{ id: 'b1', url: `http://127.0.0.1:${backendPort}` }],
      warmUp: false,
    });
    const app = express();
    let report: (x: { req: string[]; res: string[] }) => void = () => undefined;
    const seen = new Promise<{ req: string[]; res: string[] }>((resolve) => (report = resolve));
    app.use((req: Request, res: Response, next: () => void) => {
      res.on('finish', () =>
        setImmediate(() =>
          report({ req: added(req, before.get(req)), res: added(res, before.get(res)) }),
        ),
      );
      next();
    });
    app.use(lb);
    const { server: gateway, before } = recordingServer(app);
    const port = await listen(gateway);
    try {
      await lb.ready();
      const r = await get(port, '/hello?x=1');
      expect(r).toMatchObject({ status: 200, body: 'GET /hello?x=1 ' });
      // Neither does the balancer's proxy path.
      expect(await seen).toEqual({ req: [], res: [] });
    } finally {
      await close(gateway);
      await lb.close();
      await close(backend);
    }
  });

  it('declares requestFields too: a body parser adds nothing after construction', async () => {
    const app = express();
    const { server, before } = recordingServer(app, ['body', '_body']);
    app.use(express.json());
    let addedToReq: string[] | undefined;
    app.post('/p', (req: Request, res: Response) => {
      addedToReq = added(req, before.get(req));
      res.json(req.body);
    });
    const port = await listen(server);
    try {
      const body = await new Promise<string>((resolve, reject) => {
        const rq = http.request(
          {
            host: '127.0.0.1',
            port,
            path: '/p',
            method: 'POST',
            agent: false,
            headers: { 'content-type': 'application/json' },
          },
          (res) => {
            let b = '';
            res.on('data', (d: Buffer) => (b += d.toString()));
            res.on('end', () => resolve(b));
          },
        );
        rq.on('error', reject);
        rq.end('{"a":1}');
      });
      expect(JSON.parse(body)).toEqual({ a: 1 });
      expect(addedToReq).toEqual([]);
    } finally {
      await close(server);
    }
  });

  it('refuses requestFields that would hide or break a prototype, with a coded error', () => {
    for (const bad of [['query'], ['__proto__'], ['constructor'], ['a-b'], [''], [1]]) {
      expect(() => gatewayServerOptions({ requestFields: bad as string[] })).toThrow(GatewayError);
    }
    expect(() => gatewayServerOptions({ requestFields: 'body' as unknown as string[] })).toThrow(
      /requestFields must be an array of field names/,
    );
    let code: string | undefined;
    try {
      gatewayServerOptions({ requestFields: ['query'] });
    } catch (err) {
      code = (err as GatewayError).code;
    }
    expect(code).toBe('LW_GW_INVALID_OPTION');
    expect(EXPRESS_REQUEST_FIELDS).toContain('next');
  });
});
