import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { MqttClient } from 'mqtt';
import {
  createDecoder,
  type Message,
  type MetricsReport,
  type SigningKey,
} from '@loadwise/protocol';

/** The built CLI: spawned processes run dist/, never the TypeScript sources. */
export const AGENT_CLI = path.resolve(__dirname, '../../packages/health-agent/dist/cli.js');

export interface AgentProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (or the signal name). */
  exited: Promise<number | string>;
  /** SIGKILLs the process if it is still running (for afterEach). */
  kill(): Promise<void>;
}

/** The committed bin shims npm links (`loadwise-agent`, `loadwise`); they load dist/. */
export const AGENT_BIN = path.resolve(
  __dirname,
  '../../packages/health-agent/bin/loadwise-agent.js',
);
export const GATEWAY_BIN = path.resolve(__dirname, '../../packages/gateway-plugin/bin/loadwise.js');

export function spawnAgent(args: string[], env: NodeJS.ProcessEnv = {}): AgentProcess {
  return spawnScript(AGENT_CLI, args, env);
}

/** Runs a Node script with a clean environment (PATH plus `env`), collecting its output. */
export function spawnScript(
  script: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
): AgentProcess {
  const child = spawn(process.execPath, [script, ...args], {
    env: { PATH: process.env.PATH, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (c: string) => (out += c));
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (err += c));
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? signal ?? -1)),
  );
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exited,
    async kill() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}

export interface Received {
  message: Message;
  retained: boolean;
  atMs: number;
}

/** The metrics report a received message is, or undefined for a status or registration. */
export const metricsOf = (r: Received): MetricsReport | undefined =>
  r.message.kind === 'metrics' ? r.message : undefined;

/** Decodes (and so validates, and checks signatures when keys are given) every message a subscriber gets. */
export function inbox(client: MqttClient, prefix: string, keys?: SigningKey[]) {
  const decoder = createDecoder({ prefix, ...(keys ? { keys } : {}) });
  const received: Received[] = [];
  const rejected: string[] = [];
  client.on('message', (topic, payload, packet) => {
    if (payload.length === 0) return; // a cleared retained message
    const r = decoder.decode(topic, payload, { retained: packet.retain });
    if (r.ok) received.push({ message: r.message, retained: packet.retain, atMs: Date.now() });
    else rejected.push(`${r.code}: ${r.detail}`);
  });
  return {
    received,
    rejected,
    /** Waits until a received message satisfies `pred`; returns it. Polls real I/O every 20 ms. */
    async waitFor(
      pred: (r: Received) => boolean,
      timeoutMs = 8000,
      what = 'message',
    ): Promise<Received> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = received.find(pred);
        if (hit) return hit;
        if (Date.now() > deadline) {
          throw new Error(
            `timed out waiting for ${what}; got ${received.length} (${rejected.join('; ') || 'none rejected'})`,
          );
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}
