/**
 * A backend that is this gateway itself: a configured URL that points at the gateway's
 * own listener (a wrong port), or a registration that does (discovery checks address
 * ranges, not which process listens there). Each request sent to it came back as a new
 * request, which was proxied again: three client requests made 195 before the
 * per-client limit stopped them, and without that limit nothing would have.
 *
 * Every request the gateway sends carries `X-Loadwise-Via: <gateway id>/<backend id>`,
 * after any entries it arrived with (a chain of gateways appends). A request that arrives
 * with this gateway's own id has come back. It is answered 508 Loop Detected
 * (`LW_GW_LOOP`) and never proxied when it came on one of the gateway's own connections
 * to the backend its entry names (balancer.ts `loopedBack`: the same four addresses and
 * ports, crossed), and that backend is taken out of rotation for good; or when it has
 * come back MAX_RETURNS times (a loop through another proxy or gateway). Otherwise it is
 * served: a backend may call back through the gateway and pass its headers on. The id is
 * random per balancer, so two gateways, or two services in one process, never mistake
 * each other's entries for their own.
 *
 * A header alone takes nothing out: backends see it, so a client could learn the id and
 * send it; a forged one costs its sender at most a 508.
 */
import type { IncomingMessage } from 'node:http';
import { randomBytes } from 'node:crypto';

export const VIA_HEADER = 'x-loadwise-via';
/**
 * Times a request may come back to this gateway through other proxies before it is a loop:
 * a backend that calls back through the gateway and passes its headers on (nginx's
 * proxy_pass does; a BFF or SSR layer) comes back legitimately, once or twice nested.
 */
export const MAX_RETURNS = 4;

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
   * The backend named by this gateway's own last entry when the request came back through
   * it; undefined for a request that did not (every other request: one property read).
   * The last: the gateway appended it on the request's latest pass, and a client can only
   * put entries before it. The first was read, and a client that sent `<id>/b1` on every
   * request had the proof checked against b1: a backend that is the gateway itself went
   * unnoticed and every request went round MAX_RETURNS times.
   */
  loopedBackend(via: string | undefined): string | undefined {
    if (via === undefined) return undefined;
    const at = via.lastIndexOf(this.mine);
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

  /**
   * Whether a request whose entries name this gateway is a loop: it came on the gateway's
   * own connection (`proved`: a backend is the gateway itself), or it has come back
   * MAX_RETURNS times (a loop through another proxy, each turn one more entry). Else it is
   * a request a backend made through the gateway, passing the headers on: served.
   */
  isLoop(via: string, proved: boolean): boolean {
    if (proved) return true;
    let returns = 0;
    for (let at = via.indexOf(this.mine); at !== -1; at = via.indexOf(this.mine, at + 1)) {
      if (++returns >= MAX_RETURNS) return true;
    }
    return false;
  }

  /** Sets the header for an attempt on `backendId`: what the request brought, then ours. */
  mark(headers: IncomingMessage['headers'], incoming: string | undefined, backendId: string): void {
    const entry = `${this.mine}${encodeURIComponent(backendId)}`;
    headers[VIA_HEADER] = incoming === undefined ? entry : `${incoming}, ${entry}`;
  }
}
