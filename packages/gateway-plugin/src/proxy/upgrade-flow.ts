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
import { hashKeyOf } from './affinity';
import type { FlowHost } from './flow-host';
import { setForwardedHeaders } from './forwarded';
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
    setForwardedHeaders(req, c.options.trustForwarded);
    if (c.options.forwardMountPath) {
      const original = (req as { originalUrl?: string }).originalUrl;
      if (original) req.url = original;
    }
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
