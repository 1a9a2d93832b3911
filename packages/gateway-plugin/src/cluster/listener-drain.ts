/**
 * The servers whose connections `closeListener` (run-workers.ts) closes
 * gradually. While the balancer drains (`lb.close()`), it otherwise answers
 * every request on a server that has stopped listening with
 * `Connection: close`; on these it leaves that to closeListener's own
 * decision, already taken for the answer by its first 'request' listener.
 */
export const gradualDrain = new WeakSet<object>();

/** True when the balancer's drain closes this server's connections itself (not gradualDrain). */
export function drainClosesConnections(server: object | undefined): boolean {
  return server === undefined || !gradualDrain.has(server);
}
