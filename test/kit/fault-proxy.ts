/**
 * A fault-injecting TCP proxy for chaos tests: put it between the gateway and
 * a backend (the gateway is configured with the proxy's URL) and switch the
 * network under it at run time. Loopback only, port 0.
 *
 * Faults (setFault), applied to every connection from the moment they are set:
 * - `latency`: every chunk, both ways, is delayed by `ms` (order kept);
 * - `reset`: connections are reset (RST, `socket.resetAndDestroy()`): open
 *   ones at their next byte, new ones at once;
 * - `blackhole`: new connections are accepted and never answered (what a host
 *   whose process is stuck, or a firewall that drops, looks like); open ones
 *   go silent too;
 * - `slow-body`: bytes from the backend trickle at `bytesPerTick` every
 *   `tickMs` (a slow network or a backend that streams slowly);
 * - `half-open`: open connections go silent and stay open, as when the peer
 *   vanished without FIN or RST (a host gone, a NAT entry dropped); new ones
 *   are black-holed.
 * `none` forwards as is. A silent connection stays silent after the fault is
 * cleared (its peer is gone for good); new connections work again.
 */
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';

export type Fault =
  | { kind: 'none' }
  | { kind: 'latency'; ms: number }
  | { kind: 'reset' }
  | { kind: 'blackhole' }
  | { kind: 'slow-body'; bytesPerTick: number; tickMs: number }
  | { kind: 'half-open' };

export interface FaultProxy {
  readonly url: string;
  readonly port: number;
  readonly fault: Fault;
  setFault(fault: Fault): void;
  /** Connections accepted so far, and how many are open now. */
  readonly accepted: number;
  readonly open: number;
  close(): Promise<void>;
}

/** One direction of a connection: an ordered queue that honours latency and trickling. */
class Pipe {
  private readonly queue: Array<{ chunk: Buffer; dueMs: number }> = [];
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly out: Socket,
    private readonly fault: () => Fault,
    private readonly slowApplies: boolean,
  ) {}

  push(chunk: Buffer): void {
    const f = this.fault();
    const delay = f.kind === 'latency' ? f.ms : 0;
    this.queue.push({ chunk, dueMs: Date.now() + delay });
    this.pump();
  }

  private pump(): void {
    if (this.timer) return;
    const f = this.fault();
    while (this.queue.length > 0) {
      const head = this.queue[0]!;
      const wait = head.dueMs - Date.now();
      if (wait > 0) {
        this.schedule(wait);
        return;
      }
      if (this.slowApplies && f.kind === 'slow-body') {
        const n = Math.min(f.bytesPerTick, head.chunk.length);
        this.write(head.chunk.subarray(0, n));
        if (n === head.chunk.length) this.queue.shift();
        else head.chunk = head.chunk.subarray(n);
        if (this.queue.length > 0) this.schedule(f.tickMs);
        return;
      }
      this.queue.shift();
      this.write(head.chunk);
    }
  }

  private schedule(ms: number): void {
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.pump();
    }, ms);
  }

  private write(chunk: Buffer): void {
    if (!this.out.destroyed) this.out.write(chunk);
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.queue.length = 0;
  }
}

export async function startFaultProxy(targetPort: number): Promise<FaultProxy> {
  let fault: Fault = { kind: 'none' };
  let accepted = 0;
  const sockets = new Set<Socket>();
  const pipes = new Set<Pipe>();
  const track = (s: Socket): void => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
    s.on('error', () => undefined);
  };
  const silent = (): boolean => fault.kind === 'blackhole' || fault.kind === 'half-open';

  const server: Server = createServer((client) => {
    accepted++;
    track(client);
    if (fault.kind === 'reset') return void client.resetAndDestroy();
    if (silent()) {
      client.resume(); // read and drop, answer nothing, never close
      return;
    }
    const upstream = connect(targetPort, '127.0.0.1');
    track(upstream);
    const toUpstream = new Pipe(upstream, () => fault, false);
    const toClient = new Pipe(client, () => fault, true);
    pipes.add(toUpstream);
    pipes.add(toClient);
    // Once a connection went silent it stays so: its peer is gone for good.
    let dead = false;
    const onData = (pipe: Pipe) => (chunk: Buffer) => {
      if (dead) return;
      if (fault.kind === 'reset') {
        dead = true;
        client.resetAndDestroy();
        upstream.destroy();
        return;
      }
      if (silent()) {
        dead = true;
        // Not one byte more either way, and no FIN or RST to the gateway.
        upstream.destroy();
        return;
      }
      pipe.push(chunk);
    };
    client.on('data', onData(toUpstream));
    upstream.on('data', onData(toClient));
    const cleanup = (): void => {
      toUpstream.close();
      toClient.close();
      pipes.delete(toUpstream);
      pipes.delete(toClient);
    };
    client.once('close', () => {
      cleanup();
      upstream.destroy();
    });
    upstream.once('close', () => {
      cleanup();
      // The backend closed (or died): pass that on, unless the connection is silent.
      if (!dead && !client.destroyed) client.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    get fault() {
      return fault;
    },
    setFault(f) {
      fault = f;
    },
    get accepted() {
      return accepted;
    },
    get open() {
      return sockets.size;
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const p of pipes) p.close();
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
