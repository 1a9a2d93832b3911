/**
 * A backend that is this gateway itself: a configured URL that points at the gateway's
 * own listener (a wrong port), or a registration that does (discovery checks address
 * ranges, not which process listens there). Each request sent to it came back as a new
 * request, which was proxied again: three client requests made 195 before the
 * per-client limit stopped them, and without that limit nothing would have.
 *
 * Every request the gateway sends carries `X-Loadwise-Via: <gateway id>/<backend id>`,
 * after any entries it arrived with (a chain of gateways appends). A request that arrives
 * with this gateway's own id has come back: it is answered 508 Loop Detected
 * (`LW_GW_LOOP`) and never proxied. The id is random per balancer, so two gateways, or
 * two services in one process, never mistake each other's entries for their own.
 *
 * The backend named is taken out of rotation for good only when the request came on one
 * of this gateway's own connections to it (balancer.ts `loopedBack`): backends see the
 * header, so a client could learn the id and send it, and a header alone must not let
 * anyone take a backend out. A forged one costs its sender a 508, nothing more.
 */
import type { IncomingMessage } from 'node:http';
import { randomBytes } from 'node:crypto';

export const VIA_HEADER = 'x-loadwise-via';

export class LoopGuard {
  /** This balancer's id in the header. */
  readonly id = randomBytes(6).toString('hex');
  private readonly mine = `${this.id}/`;

  /** The request's via entries as it arrived (before an attempt adds this gateway's). */
  static incoming(req: IncomingMessage): string | undefined {
    const v = req.headers[VIA_HEADER] as string | string[] | undefined;
    // An array only if a middleware before the balancer set one.
    return Array.isArray(v) ? v.join(', ') : v;
  }

  /**
   * The backend named by this gateway's own entry when the request came back through it;
   * undefined for a request that did not (every other request: one property read).
   */
  loopedBackend(via: string | undefined): string | undefined {
    if (via === undefined) return undefined;
    const at = via.indexOf(this.mine);
    if (at === -1) return undefined;
    const start = at + this.mine.length;
    const end = via.indexOf(',', start);
    const encoded = via.slice(start, end === -1 ? undefined : end).trim();
    try {
      return decodeURIComponent(encoded);
    } catch {
      return encoded;
    }
  }

  /** Sets the header for an attempt on `backendId`: what the request brought, then ours. */
  mark(req: IncomingMessage, incoming: string | undefined, backendId: string): void {
    const entry = `${this.mine}${encodeURIComponent(backendId)}`;
    req.headers[VIA_HEADER] = incoming === undefined ? entry : `${incoming}, ${entry}`;
  }
}
