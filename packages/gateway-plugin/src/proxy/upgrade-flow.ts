/**
 * WebSocket upgrades: picked like a request (same eligible set, strategy and
 * affinity key), proxied through the same http-proxy-middleware instance,
 * without retries (the upgrade request cannot be replayed once its socket is
 * handed over) and without in-flight accounting (a long-lived connection is
 * not a request in flight; counting it would skew every load estimate).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Backend } from '../registry/backend';
import { ERROR_CODE_HEADER } from '../error-response';
import { hashKeyOf } from './affinity';
import type { FlowHost } from './flow-host';
import { setForwardedHeaders } from './forwarded';
import { checkFraming, checkPath } from './request-checks';
import { classify } from './upstream-errors';

export class UpgradeFlow {
  private readonly upgrades = new WeakMap<IncomingMessage, Backend>();

  constructor(private readonly core: FlowHost) {}

  targetOf(req: IncomingMessage): string | undefined {
    return this.upgrades.get(req)?.target.href;
  }

  upgrade(req: IncomingMessage, socket: Socket, head: Buffer): void {
    const c = this.core;
    const refuse = (status: string): void => {
      socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    };
    if (c.closed || c.draining || c.overload?.overloaded || c.acceptQueue?.shed())
      return refuse('503 Service Unavailable');
    if (c.options.forwardMountPath) {
      const original = (req as { originalUrl?: string }).originalUrl;
      if (original) req.url = original;
    }
    // The same checks as a request's (request-flow.ts handle): an upgrade's
    // path is joined to the backend's base path the same way, and a target
    // that is not a path (`GET *`) would otherwise get no answer at all
    // (http-proxy-middleware leaves a socket it does not proxy alone).
    const framing = checkFraming(req);
    const bad = framing.ok ? checkPath(req.url) : framing.detail;
    if (bad !== undefined) {
      const code = framing.ok ? 'LW_GW_BAD_PATH' : 'LW_GW_BAD_REQUEST';
      c.metrics.onRequestRejected(code);
      c.logLine(`upgrade-refused:${code}`, `upgrade refused (${code}): ${bad}`, {
        event: 'request-refused',
        code,
      });
      return refuse(`400 Bad Request\r\n${ERROR_CODE_HEADER}: ${code}`);
    }
    setForwardedHeaders(req, c.options.trustForwarded);
    const aff = c.options.affinity;
    const hashKey = aff ? hashKeyOf(req, aff, c.options.trustForwarded).key : undefined;
    const nowMs = c.now();
    const backend = c.pickUpgrade(nowMs, hashKey);
    if (!backend) return refuse('503 Service Unavailable');
    this.upgrades.set(req, backend);
    socket.on('error', () => socket.destroy());
    c.engine.upgrade(backend, req, socket, head);
  }

  /** The upgrade failed: count it; there is no HTTP response to write, so close the socket. */
  onError(err: Error, req: IncomingMessage, res: ServerResponse | Socket): void {
    const backend = this.upgrades.get(req);
    if (backend) {
      this.core.metrics.onError(backend.id, classify(err as Error & { code?: string }));
      this.core.outlier.onFailure(backend);
    }
    if (!('setHeader' in res)) res.destroy();
  }
}
