import type { IncomingMessage } from 'node:http';
import WebSocket from 'ws';

/** What a WebSocket attempt came to: the first message back, or the HTTP status that refused the upgrade. */
export type WsOutcome = { echo: string } | { status: number };

/** Opens a WebSocket (a real `ws` client), sends `message`, resolves with the first reply or the refusal. */
export function wsExchange(
  url: string,
  headers: Record<string, string> = {},
  message = 'ping',
): Promise<WsOutcome> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    ws.on('unexpected-response', (_req, res: IncomingMessage) => {
      res.resume();
      resolve({ status: res.statusCode ?? 0 });
      ws.terminate();
    });
    ws.on('open', () => ws.send(message));
    ws.on('message', (data) => {
      resolve({ echo: String(data) });
      ws.close();
    });
    ws.on('error', reject);
  });
}
