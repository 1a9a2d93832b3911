/**
 * Request and response classes for the gateway's own HTTP server that declare,
 * when Node constructs them, the fields Express adds to every request
 * (docs/gateway.md, "The gateway's server"). Pass them to `http.createServer`
 * or `https.createServer`:
 *
 *   http.createServer({ ...gatewayServerOptions() }, app).listen(8080)
 *
 * Why. Express's `app.handle` gives every request and response a new
 * prototype (`Object.setPrototypeOf(req, app.request)`), and then it and its
 * router add properties: `req.next` (a closure over the request's whole
 * middleware state), `req.baseUrl`, `req.originalUrl`, `req._parsedUrl`,
 * `req.params`, `res.locals`, `res.statusCode`... V8 does not share the maps
 * of objects that gain a property after a prototype switch: each request gets
 * maps of its own, allocated where scavenges do not collect them, and they
 * keep what the properties held alive until the next major GC. Measured in one
 * process (Express 5 answering `res.end('ok')`, 20,000 keep-alive requests one
 * at a time, `--trace-gc-nvp`): 7.5 KB promoted per request with Node's
 * classes, 0.85 KB with these. In a gateway every promoted byte is copied
 * twice by the scavenger and then waits for a mark-compact: both are pauses
 * every request in flight waits through (docs/bench.md, "What kept them
 * alive").
 *
 * A field that exists from construction is only written, not added, so the
 * object keeps a map shared with every other request. Each field here starts
 * with the value a reader would see without it (`undefined`, or the
 * prototype's own default), so nothing reads differently: Express, its router
 * and Node treat an own `undefined` as they treat an absent field. `query` is
 * not declared: Express 5 serves it from a getter on its request prototype,
 * which an own field would hide.
 *
 * Middleware of your own that adds fields to every request after Express
 * (a body parser's `req.body`, an auth layer's `req.user`) has the same cost;
 * name them in `requestFields` to declare them too.
 */
import { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { invalidOption } from '../errors';

/** Fields Express 5 and its router add to every request, in the order they add them. */
export const EXPRESS_REQUEST_FIELDS: readonly string[] = [
  'res',
  'next',
  'baseUrl',
  'originalUrl',
  '_parsedUrl',
  'params',
  'route',
];

export interface GatewayServerOptions {
  IncomingMessage: typeof IncomingMessage;
  ServerResponse: typeof ServerResponse;
}

/**
 * One pair of classes for every server that declares no more fields: the
 * warm-up's shadow server (warm-up.ts) uses it too, so its requests compile
 * the constructors the real server runs. Literal stores, in Express's order.
 */
class GatewayIncomingMessage extends IncomingMessage {
  constructor(socket: Socket) {
    super(socket);
    const self = this as unknown as Record<string, unknown>;
    self.res = undefined;
    self.next = undefined;
    self.baseUrl = undefined;
    self.originalUrl = undefined;
    self._parsedUrl = undefined;
    self.params = undefined;
    self.route = undefined;
    // Node's Readable keeps its listener count on the prototype until the first
    // listener; the first `on()` would add it after Express's prototype switch.
    if (!Object.hasOwn(self, '_eventsCount')) self._eventsCount = 0;
  }
}

class GatewayServerResponse extends ServerResponse {
  // Node passes (req, { highWaterMark, ... }); the typings know only req.
  constructor(req: IncomingMessage, ...rest: unknown[]) {
    super(...([req, ...rest] as [IncomingMessage]));
    const self = this as unknown as Record<string, unknown>;
    if (!Object.hasOwn(self, 'locals')) self.locals = undefined;
    // The prototype's defaults (200, no message), as own fields.
    if (!Object.hasOwn(self, 'statusCode')) self.statusCode = this.statusCode;
    if (!Object.hasOwn(self, 'statusMessage')) self.statusMessage = this.statusMessage;
  }
}

const DEFAULT_OPTIONS: GatewayServerOptions = {
  IncomingMessage: GatewayIncomingMessage,
  ServerResponse: GatewayServerResponse as unknown as typeof ServerResponse,
};

const NAME = /^[A-Za-z_$][\w$]*$/;
/**
 * What a field declared on every request would hide: Express's request methods and getters
 * (its `request` prototype, Express 4's names too: an own `undefined` field made
 * `req.ip`, `req.path`, `req.hostname`, `req.protocol` undefined for the whole app), and
 * what would break a prototype.
 */
const RESERVED = new Set([
  ...['header', 'get', 'accepts', 'acceptsEncodings', 'acceptsCharsets', 'acceptsLanguages'],
  ...['acceptsEncoding', 'acceptsCharset', 'acceptsLanguage', 'param', 'range', 'query', 'is'],
  ...['protocol', 'secure', 'ip', 'ips', 'subdomains', 'path', 'host', 'hostname'],
  ...['fresh', 'stale', 'xhr'],
  // Express sets `app` on its app.request, not on the prototype: req.app undefined broke
  // every getter that reads the app's settings.
  'app',
  ...['__proto__', 'constructor', 'prototype'],
]);

/**
 * `{ IncomingMessage, ServerResponse }` for `http.createServer(options, app)`.
 * `requestFields`: more request fields to declare (identifiers; the names of
 * Express's request methods and getters, `__proto__`, `constructor` and `prototype`
 * are refused with `LW_GW_INVALID_OPTION`); a field Node's request already has is left
 * as it is.
 */
export function gatewayServerOptions(
  opts: { requestFields?: readonly string[] } = {},
): GatewayServerOptions {
  const extra: unknown = opts.requestFields ?? [];
  if (!Array.isArray(extra)) {
    throw invalidOption('requestFields', 'an array of field names', extra);
  }
  for (const f of extra as unknown[]) {
    if (typeof f !== 'string' || !NAME.test(f) || RESERVED.has(f)) {
      throw invalidOption(
        'requestFields[]',
        "an identifier other than Express's request methods and getters (query, ip, path...), __proto__, constructor and prototype",
        f,
      );
    }
  }
  const fields = (extra as string[]).filter(
    (f, i, all) => all.indexOf(f) === i && !EXPRESS_REQUEST_FIELDS.includes(f),
  );
  if (fields.length === 0) return { ...DEFAULT_OPTIONS };
  class WithFields extends GatewayIncomingMessage {
    constructor(socket: Socket) {
      super(socket);
      const self = this as unknown as Record<string, unknown>;
      for (const f of fields) if (!(f in self)) self[f] = undefined;
    }
  }
  return { ...DEFAULT_OPTIONS, IncomingMessage: WithFields };
}
