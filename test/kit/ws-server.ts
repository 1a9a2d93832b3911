/**
 * A real `ws` echo backend for the WebSocket tests: plain HTTP requests get
 * `http`, every WebSocket message is answered (by default `echo <message>`).
 * close() cuts the WebSockets it holds, so a test's backend closes at once.
 */
import { createServer, type IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
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

/**
 * A backend that answers every upgrade with a chunked 403 page and stalls
 * after its first chunk: framed by the close on the client's side, so a
 * clean end there reads the truncated page as whole.
 */
export async function stalledUpgradeBackend(): Promise<TestServer> {
  const server = createServer();
  server.on('upgrade', (_req, socket: Duplex) => {
    socket.on('error', () => {});
    socket.write(
      'HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n' +
        'Transfer-Encoding: chunked\r\n\r\n10\r\n{"error":"denied\r\n',
    );
  });
  return listen(server);
}

/**
 * Sends a WebSocket upgrade on `socket` and says how the connection ended
 * ('end' for a clean one, else the error code) and what had arrived.
 */
export async function upgradeUntilEnd(socket: Duplex): Promise<{ ended: string; got: string }> {
  let got = '';
  socket.on('data', (d: Buffer) => (got += d.toString('latin1')));
  const ended = new Promise<string>((resolve) => {
    socket.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    socket.once('end', () => resolve('end'));
  });
  socket.write(
    'GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n' +
      'Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n',
  );
  const how = await ended;
  socket.destroy();
  return { ended: how, got };
}
