/**
 * One http-proxy-middleware instance takes one `agent` option, but each
 * backend should have its own keep-alive pool (sized, inspected and destroyed
 * per backend). This Agent owns no sockets: `addRequest` — the hook every
 * ClientRequest calls on its agent, and the one agent-base and proxy agents
 * override too — hands the request to the pool of the backend whose host and
 * port it targets. Unknown hosts (none expected) use a fallback pool.
 */
import { Agent as HttpAgent, type ClientRequest } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { portOf } from '../registry/server';

type AddRequest = (req: ClientRequest, options: { host?: string; port?: number | string }) => void;

export function hostKey(hostname: string, port: string | number): string {
  // WHATWG URL keeps IPv6 brackets, Node's request options do not.
  return `${hostname.replace(/^\[|\]$/g, '').toLowerCase()}:${port}`;
}

export function urlHostKey(url: URL): string {
  return hostKey(url.hostname, portOf(url));
}

export interface AgentDispatcher {
  readonly agent: HttpAgent;
  set(key: string, agent: HttpAgent): void;
  /** Removes `agent` from `key`, unless another backend's pool has taken that key since. */
  delete(key: string, agent: HttpAgent): void;
  destroy(): void;
}

/** Spellings remembered at most (backends are configured: a few per backend). */
const MAX_SPELLINGS = 4096;

export function createAgentDispatcher(protocol: 'http:' | 'https:'): AgentDispatcher {
  const pools = new Map<string, HttpAgent>();
  const Base = protocol === 'https:' ? HttpsAgent : HttpAgent;
  // keepAlive must be true on the dispatcher itself: ClientRequest reads it to
  // decide between `Connection: keep-alive` and `close`.
  const fallback = new Base({ keepAlive: true, scheduling: 'lifo' });
  const dispatcher = new Base({ keepAlive: true });
  const defaultPort = protocol === 'https:' ? 443 : 80;
  // The pool of each host and port exactly as requests spell them: hostKey's
  // normalising (a regex and a lower-casing) once per spelling, not per request.
  const byRaw = new Map<string, HttpAgent>();
  (dispatcher as unknown as { addRequest: AddRequest }).addRequest = (req, options) => {
    const host = options.host ?? 'localhost';
    const port = options.port ?? defaultPort;
    const raw = `${host} ${port}`;
    let pool = byRaw.get(raw);
    if (pool === undefined) {
      pool = pools.get(hostKey(host, port)) ?? fallback;
      if (byRaw.size < MAX_SPELLINGS) byRaw.set(raw, pool);
    }
    (pool as unknown as { addRequest: AddRequest }).addRequest(req, options);
  };
  return {
    agent: dispatcher,
    set: (key, agent) => {
      pools.set(key, agent);
      byRaw.clear();
    },
    delete: (key, agent) => {
      if (pools.get(key) !== agent) return;
      pools.delete(key);
      byRaw.clear();
    },
    destroy() {
      byRaw.clear();
      pools.clear();
      fallback.destroy();
      dispatcher.destroy();
    },
  };
}
