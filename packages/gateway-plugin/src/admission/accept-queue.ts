/**
 * Shedding on the kernel's accept queue (docs/gateway.md, "Accept queue").
 *
 * A burst of new connections waits in the listen socket's accept queue before
 * the process accepts it; beyond the listen backlog the kernel drops the
 * handshake (TcpExtListenOverflows) and the client retries after 1 s, 3 s, 7 s.
 * The event-loop delay guard (overload-monitor.ts) does not see that wait: the
 * loop keeps turning while connections queue in the kernel
 * (bench/results/burst.md). This monitor reads the queue's depth from the
 * kernel's socket table and, while it is deep, lets the request flow answer
 * new requests 503 LW_GW_OVERLOADED + Retry-After before any body read or
 * proxy work: a shed request costs its parse only, so the loop's turns get a
 * little shorter and clients get an answer instead of a drop. Only a little:
 * Node 20 accepts one connection per turn (docs/gateway.md, "Accept queue"),
 * and the shed requests arrive on connections already accepted.
 *
 * The table: /proc/net/tcp (IPv4 listeners) and /proc/net/tcp6 (IPv6 and
 * dual-stack ones), format of net/ipv4/tcp_ipv4.c get_tcp4_sock. For a socket
 * in LISTEN (st 0A) rx_queue is sk_ack_backlog, the connections waiting for
 * accept(); tx_queue is 0 there (only inet_diag, `ss`'s Send-Q, reports the
 * backlog limit), so the limit comes from the `backlog` option, capped by
 * net.core.somaxconn as listen(2) caps it. The kernel lists listening sockets
 * before the others, so a read stops at the first line of another state: its
 * cost is that of the listeners, not of every connection in the namespace.
 *
 * Except for one step: the kernel finds the line after the last listener by
 * walking its connection hash from the start, over every empty bucket, and it
 * does so as soon as it has printed the last listener (seq_file asks for the
 * next record after each one it prints). That walk was most of a read's cost:
 * 0.3-0.4 ms for tcp and 3.6-4.2 ms for tcp6 on a host with few connections
 * (bench/hostile/accept-queue-read.ts). So once a full read has found a single
 * listener on the port, the reads after it stop at that listener's line as
 * soon as its rx_queue is in, in chunks small enough that the kernel prints no
 * line after it (FIRST_CHUNK): 50-140 µs for tcp, 54 µs for tcp6. A full read
 * every RECHECK_MS finds a second listener on the port (two addresses,
 * SO_REUSEPORT), and while there are several every read is full, for the
 * deepest. When the port's listener is the last one listed, the walk remains
 * (1.8-2.1 ms for tcp6).
 *
 * Off Linux, or without /proc, the signal is absent: nothing is shed for it.
 */
import { closeSync, openSync, readFileSync, readSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

export interface AcceptQueueConfig {
  /** The backlog the server listens with (Node's default 511). */
  backlog: number;
  /** Start shedding when the queue holds this share of the effective backlog. */
  shedAt: number;
  /** The shed share falls only while the queue is at or below this share of the backlog. */
  resumeAt: number;
  /** Time the shed share takes to fall from all to none while the queue stays short. */
  holdMs: number;
  /** The most of new requests ever shed (0-1). */
  maxShare: number;
  sampleIntervalMs: number;
}

/** What a request tells the monitor: the listening port it came in on, and the table. */
export interface ListenerKey {
  port: number;
  ipv6: boolean;
}

/** Depth of the accept queue of `port` (the deepest if several listen on it); null: no table. */
export type DepthReader = (key: ListenerKey) => number | null | undefined;

const LISTEN = '0A';
/** Kernels before 4.4 printed a listener's pending handshakes (SYN_RECV) right after it. */
const SYN_RECV = '03';
/** A read never goes past this, whatever the table holds. */
const MAX_BYTES = 256 * 1024;
const CHUNK = 16 * 1024;
/**
 * A read that stops at the port's listener asks for this much at a time, and
 * stops as soon as the line's rx_queue is in (byte 55 of a 150-byte
 * /proc/net/tcp line, byte 103 of a ~176-byte tcp6 one): the read that brings
 * it in ends inside that line, so the kernel prints no line after it (a next
 * line that was the last listener would start the walk). 128 bytes ran past
 * the line in tcp6: 2.0-2.2 ms for the second listener of three.
 */
const FIRST_CHUNK = 64;
/** A line's first five fields are in, and the sixth has begun: rx_queue is complete. */
const QUEUES_IN = /^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s/;
/** A read stopping at the first listener re-checks that the port has only one this often. */
export const RECHECK_MS = 10_000;
/** Growth of the shed share per sample while the queue stays at or above shedAt. */
const SHARE_STEP = 0.05;
/** Ports remembered (a gateway listens on one or two). */
const MAX_PORTS = 8;
/**
 * The reads take at most 1% of the event loop: after two reads of at least
 * d ms the next one waits 100 d. A head read costs ~0.1 ms, far under the 50 ms interval;
 * a read of /proc/net/tcp6 when no IPv6 connection is open walks the kernel's
 * whole connection hash (4.4 ms measured, bench/hostile/accept-queue-read.ts),
 * and is then made 0.44 s apart.
 */
const READ_COST_SHARE = 0.01;

export interface ListenScan {
  /** Deepest accept queue of a LISTEN line on the port; undefined when none is listed. */
  depth: number | undefined;
  /** A line of another state was seen (or, with `first`, the port's line): stop reading. */
  done: boolean;
  /** LISTEN lines on the port seen so far. */
  listeners?: number;
  /** Stop at the port's first LISTEN line. */
  first?: boolean;
}

/**
 * Scans complete lines of a /proc/net/tcp{,6} table for LISTEN sockets on `port`
 * (`portHex`: 4 upper-case hex digits). The header and malformed lines are
 * skipped, never thrown on.
 */
export function scanListeners(text: string, portHex: string, scan: ListenScan): ListenScan {
  let start = 0;
  while (start < text.length && !scan.done) {
    let end = text.indexOf('\n', start);
    if (end < 0) end = text.length;
    const line = text.slice(start, end);
    start = end + 1;
    // "  12: 0100007F:1F90 00000000:0000 0A 00000000:00000003 ..."
    const f = line.trim().split(/\s+/);
    if (f.length < 5 || !/^\d+:$/.test(f[0]!)) continue; // header, blank or garbage
    const st = f[3]!;
    if (!/^[0-9A-F]{2}$/.test(st)) continue;
    if (st !== LISTEN) {
      if (st !== SYN_RECV) scan.done = true;
      continue;
    }
    const local = f[1]!;
    const colon = local.lastIndexOf(':');
    if (colon < 0 || local.slice(colon + 1) !== portHex) continue;
    const m = /^[0-9A-F]{8}:([0-9A-F]{8})$/.exec(f[4]!);
    if (!m) continue;
    const depth = parseInt(m[1]!, 16);
    scan.depth = Math.max(scan.depth ?? 0, depth);
    scan.listeners = (scan.listeners ?? 0) + 1;
    if (scan.first) scan.done = true;
  }
  return scan;
}

export const portHex = (port: number): string => port.toString(16).toUpperCase().padStart(4, '0');

/**
 * Reads the head of a table until the listeners are over (or MAX_BYTES): the
 * accept-queue depth of `port`, undefined when nothing listens on it there,
 * null when the table cannot be read (no /proc).
 */
export function readListenDepth(path: string, port: number): number | null | undefined {
  const scan = scanTable(path, port, false);
  return scan === null ? null : scan.depth;
}

/** The scan of a table's head; `first`: stop at the port's first LISTEN line. Null: unreadable. */
function scanTable(path: string, port: number, first: boolean): ListenScan | null {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return null;
  }
  const chunk = first ? FIRST_CHUNK : CHUNK;
  const buf = Buffer.allocUnsafe(chunk);
  const scan: ListenScan = { depth: undefined, done: false, listeners: 0, first };
  const hex = portHex(port);
  try {
    let carry = '';
    let total = 0;
    while (!scan.done && total < MAX_BYTES) {
      const n = readSync(fd, buf, 0, chunk, null);
      if (n <= 0) {
        scanListeners(carry, hex, scan);
        break;
      }
      total += n;
      const text = carry + buf.toString('latin1', 0, n);
      const lastNewline = text.lastIndexOf('\n');
      carry = text.slice(lastNewline + 1);
      scanListeners(text.slice(0, lastNewline + 1), hex, scan);
      // Stopping at the port's line: judge the line being read once its queues are in.
      if (first && !scan.done && QUEUES_IN.test(carry)) {
        scanListeners(carry, hex, scan);
        if (scan.done) break;
      }
    }
  } catch {
    return null;
  } finally {
    closeSync(fd);
  }
  return scan;
}

/**
 * The product's reader: a full read of the listeners first, then, while it
 * found a single listener on the port, reads that stop at its line, with a
 * full one again every RECHECK_MS (header comment).
 */
export const procDepthReader = (procRoot = '/proc', now: () => number = Date.now): DepthReader => {
  /** Per table and port: when a full read last found exactly one listener there. */
  const single = new Map<string, number>();
  return ({ port, ipv6 }) => {
    const path = `${procRoot}/net/${ipv6 ? 'tcp6' : 'tcp'}`;
    const key = `${path}:${port}`;
    const t = now();
    const checkedAt = single.get(key);
    if (checkedAt !== undefined && t - checkedAt < RECHECK_MS && t >= checkedAt) {
      const scan = scanTable(path, port, true);
      if (scan !== null && scan.depth !== undefined) return scan.depth;
      // Gone, or unreadable now: a full read decides.
    }
    const scan = scanTable(path, port, false);
    if (scan === null) return null;
    // None found: a stopping read would find none either, and then read in full again.
    if (scan.listeners === 1) single.set(key, t);
    else single.delete(key);
    return scan.depth;
  };
};

/** net.core.somaxconn, the kernel's cap on any listen backlog; undefined when unreadable. */
export function readSomaxconn(procRoot = '/proc'): number | undefined {
  try {
    const n = Number(readFileSync(`${procRoot}/sys/net/core/somaxconn`, 'utf8').trim());
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

export interface AcceptQueueDeps {
  read?: DepthReader;
  /** Random source of the shedding draw (the `random` option). */
  random?: () => number;
  /** Requests in flight: polling goes on while there are some, as while requests arrive. */
  inFlight?: () => number;
  somaxconn?: number | undefined;
  now?: () => number;
  /** The clock a read's cost is measured on (ms; performance.now by default). */
  clock?: () => number;
  /**
   * Called once, the first time the queue holds more connections than the
   * configured backlog allows (see backlogExceeded): the server listens with a
   * larger one than `acceptQueue.backlog` says.
   */
  onBacklogExceeded?: (depth: number, limit: number) => void;
}

/**
 * Sheds a share of new requests, not all of them: a burst at a rate near what
 * the process accepts would otherwise be refused whole for a queue the process
 * was about to drain (a smoke run shed 3,900 of 4,000 requests that way). The
 * share follows the depth: at `shedAt` of the backlog it starts, it is at least
 * the depth's place between `shedAt` and the full backlog (all of them once the
 * queue is full, when the kernel drops), and it grows by SHARE_STEP a sample
 * while the queue stays deep. Hysteresis: it holds while the depth is between
 * `resumeAt` and `shedAt`, and falls to none over `holdMs` only while the depth
 * stays at or below `resumeAt`, so it does not flap between samples.
 *
 * Never more than `maxShare` (a half by default): where the gateway's own CPU
 * is what is short (a starved or overloaded host), a shed answer costs much
 * of what a proxied one does (290 against 413 CPU µs a request, backends that
 * answer at once, bench:profile), so the queue stays deep whatever is shed;
 * a share that climbed to all then held there and served 56 req/s of 1,400
 * offered, against 873 with this signal off.
 */
export class AcceptQueueMonitor {
  /** Share of new requests shed (0-1). */
  shedShare = 0;
  /** Depth of the last sample (the deepest queue of the ports seen); null before one. */
  depth: number | null = null;
  /** The effective backlog: `backlog` capped by net.core.somaxconn. */
  readonly limit: number;
  /** false once a table could not be read: the signal is absent (no /proc). */
  available = true;
  private readonly shedDepth: number;
  private readonly resumeDepth: number;
  private readonly ports = new Map<number, boolean>();
  private readonly read: DepthReader;
  private readonly now: () => number;
  private readonly clock: () => number;
  private readonly random: () => number;
  private readonly inFlight: () => number;
  private timer: NodeJS.Timeout | undefined;
  private active = false;
  private lastSampleMs: number | undefined;
  private nextReadAtMs = 0;
  /** The last read's cost (ms); 0 before the first, which is therefore never spaced. */
  private lastReadCostMs = 0;
  private onBacklogExceeded: ((depth: number, limit: number) => void) | undefined;

  constructor(
    private readonly config: AcceptQueueConfig,
    private readonly onChange: (shedding: boolean, depth: number, limit: number) => void,
    deps: AcceptQueueDeps = {},
  ) {
    this.now = deps.now ?? Date.now;
    this.read = deps.read ?? procDepthReader('/proc', this.now);
    this.clock = deps.clock ?? (() => performance.now());
    this.random = deps.random ?? Math.random;
    this.inFlight = deps.inFlight ?? (() => 0);
    this.onBacklogExceeded = deps.onBacklogExceeded;
    const somaxconn = 'somaxconn' in deps ? deps.somaxconn : readSomaxconn();
    this.limit = Math.min(config.backlog, somaxconn ?? config.backlog);
    this.shedDepth = Math.max(1, Math.ceil(config.shedAt * this.limit));
    this.resumeDepth = Math.min(this.shedDepth - 1, Math.floor(config.resumeAt * this.limit));
  }

  /** Whether it sheds at all now. */
  get shedding(): boolean {
    return this.shedShare > 0;
  }

  /** Whether this request is shed: a draw against the shed share (none drawn when 0). */
  shed(): boolean {
    return this.shedShare > 0 && (this.shedShare >= 1 || this.random() < this.shedShare);
  }

  /**
   * A request arrived at `local` (its listening port and family,
   * proxy/listen-address.ts): remember the port and poll while traffic flows
   * (requests arrive or are in flight). Per request: a map lookup and a flag.
   */
  noteRequest(local: { port?: number; family?: string }): void {
    if (!this.available) return;
    const port = local.port;
    if (port === undefined) return; // a UNIX socket or a closed one
    if (!this.ports.has(port) && this.ports.size < MAX_PORTS) {
      // A dual-stack listener (`::`) gives IPv4 clients IPv6 sockets too.
      this.ports.set(port, local.family === 'IPv6');
    }
    this.active = true;
    if (this.timer === undefined) {
      this.timer = setInterval(() => this.tick(), this.config.sampleIntervalMs);
      this.timer.unref();
    }
  }

  private tick(): void {
    const startMs = this.now();
    if (startMs < this.nextReadAtMs) return;
    // The read's cost on the high-resolution clock: a 0.1 ms read that
    // straddled a millisecond of Date.now() counted 1 ms and deferred the next
    // read by 100 ms, blinding the signal (a flaky test found it).
    const readFrom = this.clock();
    let depth: number | null = null;
    for (const [port, ipv6] of this.ports) {
      const d = this.read({ port, ipv6 });
      if (d === null) continue;
      depth = Math.max(depth ?? 0, d ?? 0);
    }
    // Spaced by the cheaper of this read and the last: one slow read is no
    // measure of the table. The first read runs cold code, and a read the
    // scheduler preempted on a busy host counts the time it waited; either
    // deferred the next read by half a second (a first read of 5 ms, 517 ms)
    // right when traffic started, and the queue that filled meanwhile went
    // unseen (a flaky test found it). A table that is costly to read is so
    // read after read, and the second read spaces them.
    const costMs = this.clock() - readFrom;
    this.nextReadAtMs = startMs + Math.min(costMs, this.lastReadCostMs) / READ_COST_SHARE;
    this.lastReadCostMs = costMs;
    if (depth === null) {
      // No table to read (not Linux, no /proc): the signal is absent, not an error.
      this.available = false;
      this.stop();
      if (this.shedding) {
        this.shedShare = 0;
        this.onChange(false, 0, this.limit);
      }
      return;
    }
    this.sample(depth);
    // Sampled first: the tick after a stall must see the queue the stall left.
    if (!this.active && !this.shedding && this.inFlight() === 0) this.stop();
    this.active = false;
  }

  /** Applies a depth (class comment); public so tests can drive it. */
  sample(depth: number): void {
    const nowMs = this.now();
    const elapsedMs = nowMs - (this.lastSampleMs ?? nowMs);
    this.lastSampleMs = nowMs;
    this.depth = depth;
    if (depth > this.limit + 1) this.backlogExceeded(depth);
    const was = this.shedShare;
    if (depth >= this.shedDepth) {
      const place =
        this.limit > this.shedDepth ? (depth - this.shedDepth) / (this.limit - this.shedDepth) : 1;
      this.shedShare = Math.min(this.config.maxShare, Math.max(was + SHARE_STEP, place));
    } else if (depth <= this.resumeDepth && was > 0) {
      const fall = this.config.holdMs > 0 ? elapsedMs / this.config.holdMs : 1;
      this.shedShare = Math.max(0, was - fall);
    }
    if (was > 0 !== this.shedShare > 0) this.onChange(this.shedShare > 0, depth, this.limit);
  }

  /**
   * Linux queues at most backlog + 1 connections (sk_acceptq_is_full), so a
   * deeper queue means the server listens with a larger backlog than
   * `acceptQueue.backlog` says, and the guard sheds from `shedAt` of the
   * smaller one: a cold start's connection burst on a server listening with
   * 4,096 was answered 503 from 256 queued connections, 1,284-2,579 requests
   * a run (docs/bench.md, "Cold start"). Only the operator knows the real
   * backlog (the kernel tells it through inet_diag, `ss`'s Send-Q, not
   * through /proc), so this is said once, not guessed.
   */
  private backlogExceeded(depth: number): void {
    const warn = this.onBacklogExceeded;
    if (warn === undefined) return;
    this.onBacklogExceeded = undefined;
    warn(depth, this.limit);
  }

  /** Seconds a shed client should wait: 1 (the queue drains within a loop turn or two). */
  retryAfterSec(): number {
    return 1;
  }

  private stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  close(): void {
    this.stop();
    this.available = false;
  }
}
