/**
 * Scenario 7's control-plane load: `count` simulated agents, each publishing a
 * real encoded metrics report (createEncoder, ~700 bytes) once per interval,
 * spread evenly over the interval as jittered agents would be. They share a
 * few MQTT connections: the cost measured is the gateway's ingest, and one
 * connection per agent would only load the broker and this process.
 */
import mqtt from 'mqtt';
import { createEncoder, type Encoder } from '@loadwise/protocol';
import { fail, onShutdown, readConfig, tell } from './child';

interface SimConfig {
  brokerUrl: string;
  prefix: string;
  count: number;
  intervalMs: number;
  connections?: number;
}

async function main(): Promise<void> {
  const cfg = readConfig<SimConfig>();
  const nConn = cfg.connections ?? 8;
  const clients = await Promise.all(
    Array.from({ length: nConn }, (_, i) =>
      mqtt.connectAsync(cfg.brokerUrl, {
        clientId: `lwbench-sim-${process.pid}-${i}`,
        reconnectPeriod: 0,
      }),
    ),
  );
  const encoders: Encoder[] = Array.from({ length: cfg.count }, (_, i) =>
    createEncoder({ backendId: `sim-${i}`, prefix: cfg.prefix }),
  );
  let published = 0;
  let i = 0;
  const perTick = Math.max(1, Math.round(cfg.count / (cfg.intervalMs / 10)));
  // Every 10 ms, publish the next slice so that each agent reports once per interval.
  const timer = setInterval(() => {
    for (let k = 0; k < perTick; k++) {
      const idx = i++ % cfg.count;
      const msg = encoders[idx]!.metrics({
        intervalMs: cfg.intervalMs,
        state: 'online',
        host: {
          cpuUtilization: 0.3 + Math.random() * 0.2,
          memoryUtilization: 0.5,
          memoryAvailableBytes: 8e9,
          cpuCount: 2,
        },
        queue: {
          inFlight: Math.floor(Math.random() * 8),
          queued: 0,
          source: { inFlight: 'tracker', queued: 'tracker' },
        },
        concurrencyLimit: 8,
        traffic: {
          rps: 100,
          errorRate: 0,
          latencyMeanMs: 40,
          latencyP50Ms: 40,
          latencyP90Ms: 41,
          latencyP99Ms: 45,
          windowMs: 10_000,
        },
        health: { verdict: 'up' },
      });
      clients[idx % nConn]!.publish(msg.topic, msg.payload, { qos: 0 });
      published++;
    }
  }, 10);
  onShutdown(async () => {
    clearInterval(timer);
    await Promise.all(clients.map((c) => c.endAsync()));
  });
  process.on('message', (m: { type?: string }) => {
    if (m.type === 'count') tell({ type: 'count', published });
  });
  tell({ type: 'ready' });
}

main().catch(fail);
