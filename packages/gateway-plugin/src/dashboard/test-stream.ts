/**
 * Recording responses for the dashboard stream's unit tests (stream.test.ts,
 * scale.test.ts): what the stream writes, read back as a browser would, with
 * fake timers and no sockets. Not part of the package (tsconfig excludes
 * test-*.ts).
 */
import { EventEmitter } from 'node:events';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { dashboardOf } from '../internals';
import type { LoadBalancerMiddleware } from '../load-balance';

/**
 * A response that records what is written; `writableLength` is what the test
 * says is unsent, or, while `reading` is false, grows by what is written (a
 * viewer that does not read).
 */
export class RecordingResponse extends EventEmitter {
  status = 0;
  chunks: string[] = [];
  /** What each write was handed, as it was (a string or a Buffer). */
  raw: (string | Buffer)[] = [];
  writableLength = 0;
  reading = true;
  ended = false;
  destroyed = false;
  writeHead(status: number): this {
    this.status = status;
    return this;
  }
  write(chunk: string | Buffer): boolean {
    this.raw.push(chunk);
    this.chunks.push(chunk.toString());
    if (!this.reading) this.writableLength += Buffer.byteLength(chunk);
    return true;
  }
  end(chunk?: string): void {
    if (chunk) this.chunks.push(chunk);
    this.ended = true;
    this.emit('close');
  }
  destroy(): void {
    this.destroyed = true;
    this.emit('close');
  }
  /** The data of each write that carries event `name`. */
  events(name: string): string[] {
    return this.chunks
      .filter((c) => c.includes(`event: ${name}\n`))
      .map((c) => c.slice(c.indexOf('data: ') + 6).trim());
  }
  /** Complete messages so far, as a browser reads the one string: [event name, data]. */
  messages(): [string, string][] {
    const text = this.chunks.join('');
    return text
      .split('\n\n')
      .slice(0, -1)
      .map((m) => [/^event: (.*)$/m.exec(m)![1]!, m.slice(m.indexOf('data: ') + 6)]);
  }
}

const request = { method: 'GET', socket: { setNoDelay: () => {} } } as unknown as IncomingMessage;

/** A viewer of `lb`'s dashboard stream, on a recording response. */
export function openViewer(lb: LoadBalancerMiddleware): RecordingResponse {
  const res = new RecordingResponse();
  dashboardOf(lb)!.stream.open(request, res as unknown as ServerResponse);
  return res;
}
