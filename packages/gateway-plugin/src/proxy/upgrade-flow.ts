/**
 * WebSocket upgrades: picked like a request (same eligible set, strategy and
 * affinity key), proxied through the same http-proxy-middleware instance,
 * without retries (the upgrade request cannot be replayed once its socket is
 * handed over) and without in-flight accounting (a long-lived connection is
 * not a request in flight; counting it would skew every load estimate).
 *
 * Every answer the gateway writes itself is a coded one, as a request's
 * (`X-Loadwise-Error`, and `Retry-After` on a 503), including a `502` when the
 * backend could not be reached before it said `101`. An open WebSocket
 * counts as the gateway's work at shutdown: `lb.close()` waits for the open
 * ones within its grace, then cuts them with their backend connections
 * (http-proxy pipes the two sockets, and a destroyed pipe source does not end
 * what it writes to).
 */
import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Backend } from '../registry/backend';
import { ERROR_CODE_HEADER } from '../error-response';
import type { GatewayErrorCode } from '../errors';
import { hashKeyOf } from './affinity';
import type { FlowHost } from './flow-host';
import { setForwardedHeaders } from './forwarded';
import { checkFraming, checkPath, refusedMethod } from './request-checks';
import { classify } from './upstream-errors';

export class UpgradeFlow {
  private readonly upgrades = new WeakMap<IncomingMessage, Backend>();
  /** Client sockets handed to the proxy, until they close. */
  private readonly open = new Set<Socket>();
  private readonly sockets = new WeakMap<IncomingMessage, Socket>();
  /** Upgrades the backend accepted (101): a WebSocket, no place for an HTTP answer any more. */
  private readonly upgraded = new WeakSet<IncomingMessage>();

  constructor(
    private readonly core: FlowHost,
    /** An open WebSocket closed (the shutdown's wait for idle looks again). */
    private readonly onClosed: () => void = () => {},
  ) {}

  /** WebSockets open through this balancer. */
  get openCount(): number {
    return this.open.size;
  }

  targetOf(req: IncomingMessage): string | undefined {
    return this.upgrades.get(req)?.target.href;
  }

  upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const c = this.core;
    if (c.closed) return refuse(socket, 503, 'LW_GW_CLOSED');
    if (c.draining) return refuse(socket, 503, 'LW_GW_DRAINING');
    if (c.overload?.overloaded || c.acceptQueue?.shed())
      return refuse(socket, 503, 'LW_GW_OVERLOADED');
    if (c.options.forwardMountPath) {
      const original = (req as { originalUrl?: string }).originalUrl;
      if (original) req.url = original;
    }
    // The same checks as a request's (request-flow.ts handle): an upgrade's
    // path is joined to the backend's base path the same way, and a target
    // that is not a path (`GET *`) would otherwise get no answer at all
    // (http-proxy-middleware leaves a socket it does not proxy alone).
    const framing = checkFraming(req);
    const method = framing.ok ? refusedMethod(req.method) : undefined;
    const bad = method ?? (framing.ok ? checkPath(req.url) : framing.detail);
    if (bad !== undefined) {
      const code =
        method !== undefined
          ? 'LW_GW_METHOD_NOT_ALLOWED'
          : framing.ok
            ? 'LW_GW_BAD_PATH'
            : 'LW_GW_BAD_REQUEST';
      c.metrics.onRequestRejected(code);
      c.logLine(`upgrade-refused:${code}`, `upgrade refused (${code}): ${bad}`, {
        event: 'request-refused',
        code,
      });
      return refuse(socket, method !== undefined ? 405 : 400, code);
    }
    setForwardedHeaders(req, c.options.trustForwarded);
    const aff = c.options.affinity;
    const hashKey = aff ? hashKeyOf(req, aff, c.options.trustForwarded).key : undefined;
    const nowMs = c.now();
    const backend = c.pickUpgrade(nowMs, hashKey);
    if (!backend) return refuse(socket, 503, 'LW_GW_NO_BACKEND');
    this.upgrades.set(req, backend);
    this.sockets.set(req, socket);
    this.open.add(socket);
    socket.on('error', () => socket.destroy());
    socket.once('close', () => {
      this.open.delete(socket);
      this.onClosed();
    });
    c.engine.upgrade(backend, req, socket, head);
  }

  /** The backend request of an upgrade: its socket, once upgraded, closes with the client's. */
  onProxyReq(proxyReq: ClientRequest, req: IncomingMessage): void {
    const socket = this.sockets.get(req);
    if (!socket) return;
    proxyReq.once('upgrade', (_res: IncomingMessage, backendSocket: Socket) => {
      this.upgraded.add(req);
      if (socket.destroyed) backendSocket.destroy();
      else socket.once('close', () => backendSocket.destroy());
    });
  }

  /**
   * The upgrade failed: count it. Before the backend said 101 nothing was
   * written to the client yet, so it gets a coded 502; after, it is a broken
   * WebSocket, and its socket is closed.
   */
  onError(err: Error, req: IncomingMessage, res: ServerResponse | Socket): void {
    const backend = this.upgrades.get(req);
    if (backend) {
      this.core.metrics.onError(backend.id, classify(err as Error & { code?: string }));
      this.core.outlier.onFailure(backend);
    }
    if ('setHeader' in res) return;
    if (!this.upgraded.has(req) && res.writable) refuse(res, 502, 'LW_GW_UPSTREAM_FAILED');
    else res.destroy();
  }

  /** lb.close() after its grace: every WebSocket still open is cut, with its backend side. */
  closeAll(): void {
    for (const socket of this.open) socket.destroy();
  }
}

const REASONS: Record<number, string> = {
  400: 'Bad Request',
  405: 'Method Not Allowed',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
};

/** A coded answer on the raw socket of an upgrade, which then closes. */
function refuse(socket: Socket, status: 400 | 405 | 502 | 503, code: GatewayErrorCode): void {
  const retry = status === 503 ? 'Retry-After: 1\r\n' : '';
  socket.end(
    `HTTP/1.1 ${status} ${REASONS[status]}\r\n${ERROR_CODE_HEADER}: ${code}\r\n${retry}` +
      'Connection: close\r\nContent-Length: 0\r\n\r\n',
  );
}
