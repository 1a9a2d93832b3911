/**
 * Listens to the agents' reports on the broker, like a gateway would, and
 * keeps the latest valid metrics report and status of each backend. The quick
 * start prints from it; the test kit waits on it ("every agent has reported").
 */
import { connect, type MqttClient } from 'mqtt';
import {
  createDecoder,
  subscriptionFilter,
  type BackendState,
  type MetricsReport,
} from '@loadwise/protocol';

export interface BackendReports {
  /** Latest valid metrics report and when it arrived (Date.now()). */
  metrics: MetricsReport | undefined;
  metricsAtMs: number | undefined;
  /** Latest lifecycle state from a status message, and whether it was the agent's Last Will. */
  state: BackendState | undefined;
  will: boolean;
  /** Valid metrics reports received. */
  reports: number;
}

export interface ReportMonitor {
  readonly backends: ReadonlyMap<string, BackendReports>;
  /** Messages the decoder rejected, by LW_PROTO_* code. */
  readonly invalid: ReadonlyMap<string, number>;
  /** Resolves once each of `ids` has at least `minReports` new reports (counted from now). */
  waitForReports(ids: readonly string[], minReports?: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

export async function startReportMonitor(
  brokerUrl: string,
  prefix?: string,
): Promise<ReportMonitor> {
  const decoder = createDecoder({ prefix });
  const backends = new Map<string, BackendReports>();
  const invalid = new Map<string, number>();
  const waiters = new Set<() => void>();
  const entry = (id: string): BackendReports => {
    let e = backends.get(id);
    if (!e) {
      e = { metrics: undefined, metricsAtMs: undefined, state: undefined, will: false, reports: 0 };
      backends.set(id, e);
    }
    return e;
  };

  const client: MqttClient = connect(brokerUrl, {
    reconnectPeriod: 500,
    connectTimeout: 5_000,
    clientId: `lw-monitor-${process.pid}-${Math.random().toString(16).slice(2, 10)}`,
  });
  client.on('error', () => undefined); // reconnects on its own; errors are not fatal here
  client.on('message', (topic, payload, packet) => {
    if (payload.length === 0) return; // a cleared retained message
    const r = decoder.decode(topic, payload, { retained: packet.retain });
    if (!r.ok) {
      invalid.set(r.code, (invalid.get(r.code) ?? 0) + 1);
      return;
    }
    const m = r.message;
    const e = entry(m.backendId);
    if (m.kind === 'metrics') {
      e.metrics = m;
      e.metricsAtMs = Date.now();
      e.reports++;
    } else if (m.kind === 'status') {
      e.state = m.state;
      e.will = m.will === true;
    }
    for (const w of waiters) w();
  });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  await client.subscribeAsync(subscriptionFilter(prefix ?? 'loadwise'), { qos: 0 });

  return {
    backends,
    invalid,
    waitForReports(ids, minReports = 1, timeoutMs = 15_000) {
      const start = new Map(ids.map((id) => [id, backends.get(id)?.reports ?? 0]));
      const done = (): boolean =>
        ids.every((id) => (backends.get(id)?.reports ?? 0) - start.get(id)! >= minReports);
      if (done()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const check = (): void => {
          if (!done()) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          const have = ids.map(
            (id) => `${id}=${(backends.get(id)?.reports ?? 0) - start.get(id)!}`,
          );
          reject(
            new Error(
              `reports within ${timeoutMs} ms: ${have.join(' ')} (wanted ${minReports} each)`,
            ),
          );
        }, timeoutMs);
        waiters.add(check);
      });
    },
    close: () => new Promise<void>((resolve) => client.end(true, {}, () => resolve())),
  };
}
