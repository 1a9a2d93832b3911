/**
 * Shared parts of the chaos scenarios: a scale switch (short runs in
 * `npm test`, long ones in `npm run test:chaos`), an open-loop load driver
 * that records every request, and a signed fleet behind a gateway.
 *
 * Scenarios print what a client saw (errors by kind, time to eject, time to
 * recover) and assert loosely on counts, never on timing thresholds: the
 * machine is shared and its timing is not ours.
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startEmbeddedBroker, type LoadBalanceOptions } from '@loadwise/gateway-plugin';
import type { SigningKey } from '@loadwise/protocol';
import { uniquePrefix } from './brokers';
import { eventually, startFleet, type Fleet, type FleetBackendSpec } from './fleet';
import { startGateway, type TestGateway } from './gateway';

/** `npm run test:chaos` sets LW_CHAOS=full (jest.chaos.config.js); `npm test` runs short. */
export const FULL = process.env.LW_CHAOS === 'full';

export function scale<T>(short: T, full: T): T {
  return FULL ? full : short;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export interface RequestRecord {
  /** ms since the load started. */
  startMs: number;
  endMs: number;
  /** HTTP status, or 0 when the client got no response. */
  status: number;
  servedBy: string | undefined;
  retryAfter: string | undefined;
  /** Client-side error code when status is 0 (ECONNRESET, TIMEOUT, ...). */
  error: string | undefined;
  /** The gateway's error code (LW_GW_*) of a JSON error answer. */
  code: string | undefined;
}

export interface OpenLoad {
  readonly records: RequestRecord[];
  /** ms since the load started. */
  now(): number;
  /** Resolves when the last request sent has ended. */
  done: Promise<RequestRecord[]>;
  stop(): Promise<RequestRecord[]>;
}

/**
 * Open-loop GETs at `rate` per second for at most `durationMs` (bounded in
 * count and time): arrivals do not wait for answers, so a slow or stuck
 * backend shows as it would to real clients. `timeoutMs` (default 60 s) is
 * the client's patience, longer than the gateway's own timeouts (30 s at most).
 */
export function openLoad(opts: {
  url: string;
  rate: number;
  durationMs: number;
  timeoutMs?: number;
}): OpenLoad {
  // Sockets enough that arrivals never queue in the client (that wait would not be the
  // gateway's); idle ones closed well before the gateway's keep-alive timeout (Node's 5 s),
  // so a reused socket never races the server closing it (a client-side ECONNRESET).
  const agent = new http.Agent({ keepAlive: true, maxSockets: 2048, timeout: 2_000 });
  const target = new URL(opts.url);
  const t0 = performance.now();
  const now = (): number => performance.now() - t0;
  const records: RequestRecord[] = [];
  let outstanding = 0;
  let stopped = false;
  let sent = 0;
  let resolveDone!: (r: RequestRecord[]) => void;
  const done = new Promise<RequestRecord[]>((r) => (resolveDone = r));
  const maybeDone = (): void => {
    if ((stopped || now() >= opts.durationMs) && outstanding === 0) {
      clearInterval(timer);
      agent.destroy();
      resolveDone(records);
    }
  };
  const one = (): void => {
    outstanding++;
    const rec: RequestRecord = {
      startMs: now(),
      endMs: 0,
      status: 0,
      servedBy: undefined,
      retryAfter: undefined,
      error: undefined,
      code: undefined,
    };
    const finish = (): void => {
      rec.endMs = now();
      records.push(rec);
      outstanding--;
      maybeDone();
    };
    const req = http.get(
      { host: target.hostname, port: target.port, path: target.pathname, agent },
      (res) => {
        rec.status = res.statusCode ?? 0;
        rec.servedBy = res.headers['x-served-by'] as string | undefined;
        rec.retryAfter = res.headers['retry-after'];
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => {
          if (rec.status >= 300 && body.length < 1024) body += c;
        });
        res.on('end', () => {
          rec.code = /"code":"(LW_[A-Z_]+)"/.exec(body)?.[1];
          finish();
        });
        res.on('error', (err: NodeJS.ErrnoException) => {
          rec.status = 0;
          rec.error = err.code ?? 'error';
          finish();
        });
      },
    );
    // A wall-clock limit, not req.setTimeout: the socket's inactivity timeout is the agent's
    // short idle timeout until a new socket has connected, which a starved machine can exceed.
    const limit = setTimeout(
      () => req.destroy(Object.assign(new Error('client timeout'), { code: 'TIMEOUT' })),
      opts.timeoutMs ?? 60_000,
    );
    req.once('close', () => clearTimeout(limit));
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (rec.endMs !== 0) return;
      rec.error = err.code ?? 'error';
      finish();
    });
  };
  let due = 0;
  let last = now();
  const maxRequests = Math.ceil((opts.rate * opts.durationMs) / 1000);
  const timer = setInterval(() => {
    const t = now();
    if (stopped || t >= opts.durationMs || sent >= maxRequests) return maybeDone();
    due += ((t - last) * opts.rate) / 1000;
    last = t;
    while (due >= 1 && sent < maxRequests) {
      due--;
      sent++;
      one();
    }
  }, 10);
  return {
    records,
    now,
    done,
    stop() {
      stopped = true;
      maybeDone();
      return done;
    },
  };
}

export interface Tally {
  sent: number;
  ok: number;
  /** Non-2xx answers and client-side errors, by status or error code. */
  failures: Record<string, number>;
  /** 503s that carried Retry-After. */
  with503RetryAfter: number;
  servedBy: Record<string, number>;
  maxLatencyMs: number;
  /** 2xx answers per second, from the first request sent to the last 2xx answer. */
  okPerSec: number;
}

/** Counts the requests that started in [fromMs, toMs). */
export function tally(records: RequestRecord[], fromMs = 0, toMs = Infinity): Tally {
  const t: Tally = {
    sent: 0,
    ok: 0,
    failures: {},
    with503RetryAfter: 0,
    servedBy: {},
    maxLatencyMs: 0,
    okPerSec: 0,
  };
  let first = Infinity;
  let lastOk = 0;
  for (const r of records) {
    if (r.startMs < fromMs || r.startMs >= toMs) continue;
    t.sent++;
    if (r.startMs < first) first = r.startMs;
    t.maxLatencyMs = Math.max(t.maxLatencyMs, Math.round(r.endMs - r.startMs));
    if (r.status >= 200 && r.status < 300) {
      t.ok++;
      if (r.endMs > lastOk) lastOk = r.endMs;
      const by = r.servedBy ?? '?';
      t.servedBy[by] = (t.servedBy[by] ?? 0) + 1;
      continue;
    }
    const key = r.status === 0 ? (r.error ?? 'error') : `${r.status}${r.code ? ` ${r.code}` : ''}`;
    t.failures[key] = (t.failures[key] ?? 0) + 1;
    if (r.status === 503 && r.retryAfter !== undefined) t.with503RetryAfter++;
  }
  t.okPerSec = lastOk > first ? Math.round((t.ok * 1000) / (lastOk - first)) : 0;
  return t;
}

export function failed(t: Tally): number {
  return t.sent - t.ok;
}

/** One line per scenario: what the client saw and how long detection and recovery took. */
export function report(scenario: string, figures: Record<string, unknown>): void {
  console.log(`[chaos${FULL ? '' : ' short'}] ${scenario}: ${JSON.stringify(figures)}`);
}

/** Time of the first gateway event matching, in ms after `sinceMs` (wall clock), or null. */
export function eventAfter(
  gw: TestGateway,
  sinceMs: number,
  names: string[],
  id?: string,
): number | null {
  const e = gw.events.find(
    (x) => x.atMs >= sinceMs && names.includes(x.name) && (id === undefined || x.data['id'] === id),
  );
  return e ? e.atMs - sinceMs : null;
}

export interface SignedFleet {
  fleet: Fleet;
  gw: TestGateway;
  key: SigningKey;
  /** The key in parseKeyFile's format, for a gateway in another process. */
  keyFile: string;
  prefix: string;
  brokerUrl: string;
  close(): Promise<void>;
}

/**
 * A fleet of real backends with real agents signing their reports (HMAC key
 * file), a gateway that holds the key, on `brokerUrl`; waits for fresh reports.
 */
export async function startSignedFleet(opts: {
  brokerUrl: string;
  label: string;
  backends: FleetBackendSpec[];
  gateway?: Partial<LoadBalanceOptions>;
  /** Called once the fleet runs: URLs the gateway uses instead (a fault proxy in between). */
  urls?: (fleet: Fleet) => Promise<Record<string, string>>;
}): Promise<SignedFleet> {
  const key: SigningKey = { keyId: 'chaos', secret: randomBytes(32) };
  const dir = mkdtempSync(path.join(tmpdir(), 'lw-chaos-'));
  const keyFile = path.join(dir, 'keys');
  writeFileSync(keyFile, `chaos ${key.secret.toString('base64')}\n`, { mode: 0o600 });
  const prefix = uniquePrefix(opts.label);
  let fleet: Fleet | undefined;
  let gw: TestGateway | undefined;
  const close = async (): Promise<void> => {
    await gw?.close();
    await fleet?.close();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    fleet = await startFleet({
      brokerUrl: opts.brokerUrl,
      prefix,
      backends: opts.backends,
      agentArgs: ['--key-file', keyFile],
    });
    const urls = (await opts.urls?.(fleet)) ?? {};
    gw = await startGateway({
      backends: fleet.backendConfig().map((b) => ({ ...b, url: urls[b.id] ?? b.url })),
      broker: opts.brokerUrl,
      topicPrefix: prefix,
      keys: [key],
      // Overload shedding is off (startGateway's default): the gateway shares this process's
      // event loop with the load driver and the fleet's plumbing.
      // The load driver stands for many clients but comes from one address.
      maxInFlightPerClient: false,
      ...opts.gateway,
    });
    const g = gw;
    await eventually(
      () => g.snapshot().backends.every((b) => b.reportFresh),
      15_000,
      'fresh signed reports',
    );
    return { fleet, gw, key, keyFile, prefix, brokerUrl: opts.brokerUrl, close };
  } catch (err) {
    await close();
    throw err;
  }
}

/**
 * The usual scenario setup as jest hooks: an embedded broker and a signed
 * fleet behind a gateway before the file's tests, both closed after them.
 * Returns a getter (the fleet exists once beforeAll ran).
 */
export function useSignedFleet(
  opts: Omit<Parameters<typeof startSignedFleet>[0], 'brokerUrl'>,
): () => SignedFleet {
  let broker: { url: string; close(): Promise<void> } | undefined;
  let sf: SignedFleet | undefined;
  beforeAll(async () => {
    broker = await startEmbeddedBroker();
    sf = await startSignedFleet({ brokerUrl: broker.url, ...opts });
  }, 60_000);
  afterAll(async () => {
    await sf?.close();
    await broker?.close();
  }, 30_000);
  return () => {
    if (!sf) throw new Error('the signed fleet did not start');
    return sf;
  };
}
