/**
 * A real `ws` echo backend for the WebSocket tests: plain HTTP requests get
 * `http`, every WebSocket message is answered (by default `echo <message>`).
 * close() cuts the WebSockets it holds, so a test's backend closes at once.
 */
import { createServer, type IncomingMessage } from 'node:http';
import { WebSocketServer } from 'ws';
import { listen, type TestServer } from './http';

export interface EchoBackend extends TestServer {
  wss: WebSocketServer;
  /** WebSocket connections the backend holds now. */
  open(): number;
}

export async function wsEchoBackend(
  reply: (message: string, req: IncomingMessage) => string = (m) => `echo ${m}`,
  httpBody = 'http',
): Promise<EchoBackend> {
  const server = createServer((_req, res) => res.end(httpBody));
  const wss = new WebSocketServer({ server });
  wss.on('connection', (socket, req) => {
    // A frame ws refuses (a test's garbage) closes that socket with 1002; unheard, the
    // 'error' it emits first ended the test process.
    socket.on('error', () => {});
    socket.on('message', (d) => socket.send(reply(String(d), req)));
  });
  const s = await listen(server);
  return {
    ...s,
    wss,
    open: () => wss.clients.size,
    close: async () => {
      for (const c of wss.clients) c.terminate();
      wss.close();
      await s.close();
    },
  };
}
