/**
 * A minimal server-sent events reader for tests (WHATWG HTML §9.2.6 event
 * stream parsing, the subset the dashboard uses: `event:`, `data:`, `retry:`
 * and blank-line dispatch). No keep-alive agent: closing it closes the socket.
 */
import { request, type IncomingMessage } from 'node:http';

export interface SseEvent {
  event: string;
  data: string;
}

export interface SseStream {
  status: number;
  headers: IncomingMessage['headers'];
  /** Resolves with the next event named `name` (events arrive in order; earlier ones are skipped). */
  next(name: string, timeoutMs?: number): Promise<SseEvent>;
  close(): void;
  /** Resolves when the server ended the stream. */
  ended: Promise<void>;
}

export function openSse(url: string, headers: Record<string, string> = {}): Promise<SseStream> {
  return new Promise((resolve, reject) => {
    const req = request(url, { agent: false, headers }, (res) => {
      const queue: SseEvent[] = [];
      const waiters: (() => void)[] = [];
      let buffer = '';
      let event = 'message';
      let data: string[] = [];
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        buffer += chunk;
        let nl: number;
        while ((nl = buffer.indexOf('\n')) >= 0) {
          const line = buffer.slice(0, nl);
          buffer = buffer.slice(nl + 1);
          if (line === '') {
            if (data.length > 0) queue.push({ event, data: data.join('\n') });
            event = 'message';
            data = [];
            waiters.splice(0).forEach((w) => w());
          } else if (line.startsWith('event: ')) event = line.slice(7);
          else if (line.startsWith('data: ')) data.push(line.slice(6));
        }
      });
      const ended = new Promise<void>((done) => res.on('close', () => done()));
      resolve({
        status: res.statusCode ?? 0,
        headers: res.headers,
        ended,
        close: () => req.destroy(),
        async next(name, timeoutMs = 10_000) {
          const deadline = Date.now() + timeoutMs;
          for (;;) {
            const i = queue.findIndex((e) => e.event === name);
            if (i >= 0) return queue.splice(0, i + 1)[i]!;
            const left = deadline - Date.now();
            if (left <= 0) throw new Error(`no '${name}' event within ${timeoutMs} ms`);
            await new Promise<void>((wake) => {
              const timer = setTimeout(wake, left);
              waiters.push(() => {
                clearTimeout(timer);
                wake();
              });
            });
          }
        },
      });
    });
    req.on('error', reject);
    req.end();
  });
}
