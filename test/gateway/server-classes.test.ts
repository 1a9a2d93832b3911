import http, { IncomingMessage } from 'node:http';
import { Socket } from 'node:net';
import express, { type Request, type Response } from 'express';
import {
  EXPRESS_REQUEST_FIELDS,
  GatewayError,
  gatewayServerOptions,
  loadBalance,
} from '@loadwise/gateway-plugin';
import { listen, send, startBackend } from '../kit/http';

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
    const srv = await listen(server);
    try {
      const r = await send(`${srv.url}/api/items/7?q=x`);
      expect(r.status).toBe(201);
      expect(r.json()).toEqual({ id: '7', q: 'x', base: '/api' });
      expect(await seen).toEqual({ req: [], res: [] });
    } finally {
      await srv.close();
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
    const srv = await listen(server);
    try {
      await send(`${srv.url}/x`);
      expect(addedToReq).toEqual(expect.arrayContaining(['next', 'baseUrl', 'originalUrl']));
    } finally {
      await srv.close();
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
    const srv = await listen(http.createServer(gatewayServerOptions(), app));
    try {
      const ok = await send(`${srv.url}/q?a=1&b=2`);
      expect(ok.status).toBe(200);
      expect(ok.statusMessage).toBe('OK');
      expect(ok.json()).toEqual({
        query: { a: '1', b: '2' },
        locals: 'object',
        statusCode: 200,
        originalUrl: '/q?a=1&b=2',
      });
      const missing = await send(`${srv.url}/nothing`);
      expect(missing.status).toBe(404);
      expect(missing.statusMessage).toBe('Not Found');
    } finally {
      await srv.close();
    }
  });

  it('serves a loadBalance() gateway: requests reach the backend and come back whole', async () => {
    const backend = await startBackend('b1', (req, res, body) =>
      res.end(`${req.method} ${req.url} ${body}`),
    );
    const lb = loadBalance({
      backends: [{ id: 'b1', url: backend.url }],
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
    const gw = await listen(gateway);
    try {
      await lb.ready();
      const r = await send(`${gw.url}/hello?x=1`);
      expect(r).toMatchObject({ status: 200, body: 'GET /hello?x=1 ' });
      // Neither does the balancer's proxy path.
      expect(await seen).toEqual({ req: [], res: [] });
    } finally {
      await gw.close();
      await lb.close();
      await backend.close();
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
    const srv = await listen(server);
    try {
      const r = await send(`${srv.url}/p`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{"a":1}',
      });
      expect(r.json()).toEqual({ a: 1 });
      expect(addedToReq).toEqual([]);
    } finally {
      await srv.close();
    }
  });

  it('refuses requestFields that would hide or break a prototype, with a coded error', () => {
    for (const bad of [['query'], ['app'], ['__proto__'], ['constructor'], ['a-b'], [''], [1]]) {
      expect(() => gatewayServerOptions({ requestFields: bad as string[] })).toThrow(GatewayError);
    }
    // Every method and getter of Express's request: an own undefined field hid it from the
    // whole app (req.ip, req.path, req.hostname were undefined). A new Express that adds
    // one fails here.
    for (const name of Object.getOwnPropertyNames(express.request)) {
      expect(() => gatewayServerOptions({ requestFields: [name] })).toThrow(GatewayError);
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

  it('declares every field EXPRESS_REQUEST_FIELDS names, and requestFields beside them', () => {
    const plain = new (gatewayServerOptions().IncomingMessage)(new Socket());
    for (const f of EXPRESS_REQUEST_FIELDS) expect(Object.hasOwn(plain, f)).toBe(true);
    const more = new (gatewayServerOptions({ requestFields: ['user'] }).IncomingMessage)(
      new Socket(),
    );
    for (const f of [...EXPRESS_REQUEST_FIELDS, 'user']) expect(Object.hasOwn(more, f)).toBe(true);
    expect(more).toBeInstanceOf(IncomingMessage);
  });
});
