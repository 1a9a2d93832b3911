import { httpGet } from './http-get';

export const DEFAULT_PROBE_TIMEOUT_MS = 1000;

export interface ProbeOptions {
  url: URL;
  timeoutMs: number;
  /** Accepted statuses; default any 2xx or 3xx. */
  expectStatus?: readonly number[];
}

export interface ProbeResult {
  ok: boolean;
  latencyMs?: number;
  status?: number;
  reason?: string;
}

/**
 * One GET of the service's health URL from beside it: a backend that fails it
 * is reported down. Only the status counts: the body is not read (a large or
 * endless health page is no failure), and the latency is the time to the head.
 */
export async function probe(opts: ProbeOptions): Promise<ProbeResult> {
  try {
    const res = await httpGet(opts.url, opts.timeoutMs, undefined, { headOnly: true });
    const latencyMs = Math.round(res.latencyMs * 100) / 100;
    // llhttp takes any three digits (`HTTP/1.1 999`): such a status is no
    // health.probeStatus the protocol allows, and reporting it would make
    // every report unencodable. The probe fails, naming it, and the backend is down.
    if (!validStatus(res.status)) {
      return { ok: false, latencyMs, reason: `probe answered an invalid status ${res.status}` };
    }
    const ok = opts.expectStatus
      ? opts.expectStatus.includes(res.status)
      : res.status >= 200 && res.status < 400;
    return ok
      ? { ok, status: res.status, latencyMs }
      : { ok, status: res.status, latencyMs, reason: `probe answered ${res.status}` };
  } catch (err) {
    return { ok: false, reason: `probe failed: ${(err as Error).message}`.slice(0, 200) };
  }
}

function validStatus(status: number): boolean {
  return Number.isInteger(status) && status >= 100 && status <= 599;
}
