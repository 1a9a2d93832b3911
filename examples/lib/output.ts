/**
 * An example whose stdout's reader went away (`npm start | head -3`): the next
 * line was an uncaught `write EPIPE`, exit 1 with a stack, and no cleanup ran.
 * As the packages' command lines do (the `loadwise` CLI's run(), the health
 * agent's and runWorkers' keepRunningWithoutOutput, none of them exported):
 * an 'error' on stdout or stderr is taken, the stream is left destroyed and
 * later writes to it are dropped. Then `lost` is called, once, for a lost
 * stdout: a program whose output is its point stops there, as `head` wanted.
 */
export function onLostOutput(lost: () => void): void {
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  process.stdout.once('error', lost);
}

/**
 * A URL fit to print: `user:password@` shown as `***@`, each query parameter's value as
 * `***` (a presigned `wss://` URL carries its signature there), no fragment. The same rule
 * as the gateway's own log lines (redactUrl in packages/gateway-plugin/src/observability/
 * event-log.ts, not exported). The examples printed `--broker mqtt://gw:secret@...` whole.
 */
export function redactUrl(url: string): string {
  // Up to the last `@` before any query: a password may hold an `@` or a `/`.
  const shown = url.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^?#]*@/i, '$1***@').replace(/#.*$/s, '');
  const q = shown.indexOf('?');
  if (q < 0) return shown;
  return shown.slice(0, q) + shown.slice(q).replace(/=[^&]*/g, '=***');
}
