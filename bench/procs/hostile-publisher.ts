/**
 * Someone with publish rights on the broker, alone in a process so that what
 * it costs to produce the attack never shows up in the gateway's (or a test
 * process's) CPU and memory. Two modes:
 *
 * - `flood`: publishes `payloads` round-robin over `topics` at `ratePerSec`
 *   (QoS 0, in 10 ms slices over `connections` clients) for `durationMs`;
 * - `big`: publishes one message of `bytes` bytes to `topics[0]` and waits
 *   until it is written (or the broker hangs up on it).
 *
 * Reports `{ type: 'done', sent, closedByBroker }` and exits.
 */
import mqtt, { type MqttClient } from 'mqtt';
import { fail, readConfig, tell } from './child';

export interface HostilePublisherConfig {
  brokerUrl: string;
  mode: 'flood' | 'big';
  topics: string[];
  /** Flood payloads, used in turn (one per topic is typical). */
  payloads?: string[];
  ratePerSec?: number;
  durationMs?: number;
  connections?: number;
  bytes?: number;
  /** mqtt.js TLS/login options, when the broker wants them. */
  mqttOptions?: Record<string, unknown>;
}

async function main(): Promise<void> {
  const cfg = readConfig<HostilePublisherConfig>();
  const nConn = cfg.mode === 'big' ? 1 : (cfg.connections ?? 4);
  const clients: MqttClient[] = await Promise.all(
    Array.from({ length: nConn }, (_, i) =>
      mqtt.connectAsync(cfg.brokerUrl, {
        clientId: `lw-hostile-${process.pid}-${i}`,
        reconnectPeriod: 0,
        ...(cfg.mqttOptions ?? {}),
      }),
    ),
  );
  let closedByBroker = 0;
  for (const c of clients) {
    c.on('error', () => undefined); // ECONNRESET when a broker hangs up on an oversized packet
    c.on('close', () => closedByBroker++);
  }
  let sent = 0;
  if (cfg.mode === 'big') {
    const c = clients[0]!;
    const done = new Promise<void>((resolve) => {
      c.once('close', () => resolve());
      c.publish(cfg.topics[0]!, Buffer.alloc(cfg.bytes ?? 20e6, 0x7b), { qos: 0 }, () => {
        sent = 1;
        resolve();
      });
    });
    await done;
    // Give a broker that refuses the packet the time to hang up, so the report says so.
    await new Promise((r) => setTimeout(r, 500));
  } else {
    const payloads = cfg.payloads ?? ['{}'];
    const perSlice = (cfg.ratePerSec ?? 1000) / 100;
    const end = Date.now() + (cfg.durationMs ?? 1000);
    let due = 0;
    let i = 0;
    await new Promise<void>((resolve) => {
      const timer = setInterval(() => {
        if (Date.now() >= end) {
          clearInterval(timer);
          resolve();
          return;
        }
        // Carry fractions over so the mean rate is exact.
        due += perSlice;
        for (; due >= 1; due--, i++) {
          const c = clients[i % clients.length]!;
          if (!c.connected) continue;
          c.publish(cfg.topics[i % cfg.topics.length]!, payloads[i % payloads.length]!, {
            qos: 0,
          });
          sent++;
        }
      }, 10);
    });
  }
  const hungUp = closedByBroker;
  await Promise.all(clients.map((c) => c.endAsync().catch(() => undefined)));
  tell({ type: 'done', sent, closedByBroker: hungUp });
  process.exit(0);
}

main().catch(fail);
