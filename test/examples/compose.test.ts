/**
 * examples/compose/: there is no Docker here (nor in CI), so the Compose file
 * is checked, not run: every file, build context and Dockerfile it names
 * exists; the certificates it mounts are what its own gen-certs.sh command
 * makes; every variable is a real agent or gateway option; ports, host names
 * and identities agree across the services, the Mosquitto config and its ACL;
 * the signing keys its own gen-keys.sh command makes, read as the agents and
 * the gateway read them (their own option parsers), let each agent's signed
 * report pass the gateway's check (the file had no keys, and the gateway
 * refused every report). The same config, certificates, agent and gateway run for real in
 * mosquitto.test.ts and systemd.test.ts.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { createDecoder, createEncoder, keyMaySign } from '@loadwise/protocol';
import {
  CLI_OPTIONS,
  envName,
  mergeSources,
  toAgentOptions,
} from '../../packages/health-agent/src/config';
import { configFromEnv, GATEWAY_ENV } from '../../examples/gateway-server';
import { EXAMPLES, MOSQUITTO_EXAMPLE, genCerts } from '../kit/example-broker';

const COMPOSE_DIR = path.join(EXAMPLES, 'compose');
const COMPOSE_FILE = path.join(COMPOSE_DIR, 'compose.yaml');

interface Service {
  image?: string;
  build?: { context: string; dockerfile: string };
  command?: string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  network_mode?: string;
  pid?: string;
  depends_on?: string[];
}

interface ComposeFile {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
}

const compose = parse(readFileSync(COMPOSE_FILE, 'utf8'), { merge: true }) as ComposeFile;
const services = compose.services;
const agentVars = new Set(CLI_OPTIONS.map((o) => envName(o.flag)));
const isAgent = (s: Service): boolean => s.environment?.['LOADWISE_BACKEND_ID'] !== undefined;
const isGateway = (s: Service): boolean => s.environment?.['LOADWISE_GW_BACKENDS'] !== undefined;
const isBackend = (s: Service): boolean => s.command?.[1] === 'examples/dist/backend.js';

function flag(s: Service, name: string): string | undefined {
  const i = s.command?.indexOf(name) ?? -1;
  return i >= 0 ? s.command![i + 1] : undefined;
}

/** The network namespace a service's URLs resolve in: its own, or `service:X`'s. */
function netOf(name: string): string {
  const mode = services[name]!.network_mode;
  return mode?.startsWith('service:') ? mode.slice('service:'.length) : name;
}

/** Host path behind a container path, through the service's bind mounts (relative to the compose dir). */
function hostPath(s: Service, containerPath: string): string | undefined {
  for (const v of s.volumes ?? []) {
    const [src, dst] = v.split(':') as [string, string];
    if (!src.startsWith('.')) continue;
    if (containerPath === dst || containerPath.startsWith(`${dst}/`))
      return path.join(COMPOSE_DIR, src, containerPath.slice(dst.length));
  }
  return undefined;
}

describe('examples/compose/compose.yaml', () => {
  let certDir: string;
  let keyDir: string;
  let tmp: string;

  beforeAll(() => {
    // The command the file's header gives, run into a temp dir instead of ./certs.
    const header = readFileSync(COMPOSE_FILE, 'utf8');
    const m = /^#\s+\.\.\/mosquitto\/gen-certs\.sh certs (.+)$/m.exec(header);
    if (!m) throw new Error('compose.yaml does not say how to make ./certs');
    tmp = mkdtempSync(path.join(os.tmpdir(), 'lw-compose-'));
    certDir = path.join(tmp, 'certs');
    genCerts(certDir, m[1]!.trim().split(/\s+/));
    // And the signing keys, as its gen-keys.sh command makes them.
    const k = /^#\s+\.\/gen-keys\.sh keys (.+)$/m.exec(header);
    if (!k) throw new Error('compose.yaml does not say how to make ./keys');
    keyDir = path.join(tmp, 'keys');
    execFileSync(path.join(COMPOSE_DIR, 'gen-keys.sh'), [keyDir, ...k[1]!.trim().split(/\s+/)]);
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  /** Where a compose-relative path is here: ./certs and ./keys in what gen-certs.sh and gen-keys.sh made. */
  function local(p: string): string {
    for (const [dir, made] of [
      ['certs', certDir],
      ['keys', keyDir],
    ] as const) {
      const rel = path.relative(path.join(COMPOSE_DIR, dir), p);
      if (!rel.startsWith('..')) return path.join(made, rel);
    }
    return p;
  }

  function exists(p: string): boolean {
    return existsSync(local(p));
  }

  /** A service's environment with every file it names mapped to where that file is here. */
  function localEnv(s: Service): Record<string, string> {
    const env = { ...s.environment };
    for (const [k, v] of Object.entries(env)) {
      if (!/_(TLS_CA|TLS_CERT|TLS_KEY|KEY_FILE|PASSWORD_FILE)$/.test(k)) continue;
      const host = hostPath(s, v);
      if (host !== undefined) env[k] = local(host);
    }
    return env;
  }

  it('has the broker, two backends with agent sidecars and a gateway', () => {
    const names = Object.keys(services);
    expect(names.filter((n) => isBackend(services[n]!)).sort()).toEqual(['api-1', 'api-2']);
    expect(names.filter((n) => isAgent(services[n]!)).sort()).toEqual([
      'agent-api-1',
      'agent-api-2',
    ]);
    expect(names.filter((n) => isGateway(services[n]!))).toEqual(['gateway']);
    expect(services['mosquitto']!.image).toMatch(/^eclipse-mosquitto:2/);
  });

  it('builds from contexts and a Dockerfile that exist, copying what the commands run', () => {
    for (const [name, s] of Object.entries(services)) {
      if (!s.build) continue;
      const context = path.resolve(COMPOSE_DIR, s.build.context);
      const dockerfile = path.join(context, s.build.dockerfile);
      expect({ name, context: existsSync(context), dockerfile: existsSync(dockerfile) }).toEqual({
        name,
        context: true,
        dockerfile: true,
      });
      const text = readFileSync(dockerfile, 'utf8');
      const workdir = /^WORKDIR (\S+)$/m.exec(text)?.[1];
      expect(workdir).toBeDefined();
      const copied = [...text.matchAll(/^COPY (.+) \S+$/gm)].flatMap((c) => c[1]!.split(/\s+/));
      for (const src of copied)
        expect({ src, exists: existsSync(path.join(context, src)) }).toEqual({ src, exists: true });
      // The command's script is built from sources the image copies (run after `tsc -b`).
      const script = s.command?.[0] === 'node' ? s.command[1]! : undefined;
      if (script) {
        expect(copied.some((c) => script.startsWith(`${c}/`))).toBe(true);
        expect({ script, built: existsSync(path.join(context, script)) }).toEqual({
          script,
          built: true,
        });
      }
      // Host build output and dependencies stay out of the context.
      const ignore = readFileSync(`${dockerfile}.dockerignore`, 'utf8');
      for (const p of ['**/node_modules', '**/dist']) expect(ignore).toContain(p);
    }
  });

  it('mounts files that exist (./certs as gen-certs.sh makes it) and declares its named volumes', () => {
    for (const [name, s] of Object.entries(services)) {
      for (const v of s.volumes ?? []) {
        const [src] = v.split(':') as [string];
        if (src.startsWith('.')) {
          expect({ name, src, exists: exists(path.join(COMPOSE_DIR, src)) }).toEqual({
            name,
            src,
            exists: true,
          });
        } else {
          expect(Object.keys(compose.volumes ?? {})).toContain(src);
        }
      }
    }
  });

  it('sets only real agent and gateway options, and their files are mounted', () => {
    for (const [name, s] of Object.entries(services)) {
      const env = s.environment ?? {};
      if (isAgent(s)) {
        expect({ name, unknown: Object.keys(env).filter((k) => !agentVars.has(k)) }).toEqual({
          name,
          unknown: [],
        });
      } else if (isGateway(s)) {
        expect({ name, unknown: Object.keys(env).filter((k) => !(k in GATEWAY_ENV)) }).toEqual({
          name,
          unknown: [],
        });
      }
      for (const [k, v] of Object.entries(env)) {
        if (!/_(TLS_CA|TLS_CERT|TLS_KEY|KEY_FILE|PASSWORD_FILE)$/.test(k)) continue;
        const host = hostPath(s, v);
        expect({ name, k, host: host !== undefined && exists(host) }).toEqual({
          name,
          k,
          host: true,
        });
      }
    }
  });

  it('agrees on ports and names: backends, agents, gateway, broker', () => {
    const conf = readFileSync(path.join(MOSQUITTO_EXAMPLE, 'loadwise.conf'), 'utf8');
    const brokerPort = /^listener (\d+)$/m.exec(conf)![1];
    const backendPort = new Map<string, string>();
    for (const [name, s] of Object.entries(services)) {
      if (isBackend(s)) {
        expect(flag(s, '--id')).toBe(name);
        expect(flag(s, '--host')).toBe('0.0.0.0'); // reachable from the gateway's container
        backendPort.set(name, flag(s, '--port')!);
      }
    }
    for (const [name, s] of Object.entries(services)) {
      const env = s.environment ?? {};
      for (const k of ['LOADWISE_BROKER', 'LOADWISE_GW_BROKER']) {
        if (!env[k]) continue;
        const u = new URL(env[k]);
        expect({ name, host: u.hostname, port: u.port }).toEqual({
          name,
          host: 'mosquitto',
          port: brokerPort,
        });
      }
      if (isAgent(s)) {
        const backend = netOf(name);
        expect(s.pid).toBe(`service:${backend}`); // --service-pid-file names a PID in its namespace
        expect(env['LOADWISE_BACKEND_ID']).toBe(backend);
        for (const k of ['LOADWISE_TRACKER_URL', 'LOADWISE_PROBE_URL']) {
          const u = new URL(env[k]!);
          expect({ name, k, host: u.hostname, port: u.port }).toEqual({
            name,
            k,
            host: '127.0.0.1',
            port: backendPort.get(backend),
          });
        }
        expect(s.depends_on).toEqual(expect.arrayContaining([backend, 'mosquitto']));
      }
      if (isGateway(s)) {
        const listed = env['LOADWISE_GW_BACKENDS']!.split(',').map((p) => {
          const [id, url] = p.split('=') as [string, string];
          const u = new URL(url);
          return { id, host: u.hostname, port: u.port };
        });
        expect(listed).toEqual([...backendPort].map(([id, port]) => ({ id, host: id, port })));
        const [, , published] = /^(?:[\d.]+:)?(\d+):(\d+)$/.exec(s.ports![0]!)!;
        expect(published).toBe(env['LOADWISE_GW_PORT']);
        expect(env['LOADWISE_GW_HOST']).toBe('0.0.0.0');
      }
      for (const dep of s.depends_on ?? []) expect(Object.keys(services)).toContain(dep);
    }
  });

  it('gives each agent a certificate whose CN the ACL lets publish for its backend only', () => {
    const acl = readFileSync(path.join(MOSQUITTO_EXAMPLE, 'loadwise.acl'), 'utf8');
    const rules = new Map<string, string[]>();
    let user = '';
    for (const line of acl.split('\n').map((l) => l.trim())) {
      if (line.startsWith('user ')) rules.set((user = line.slice(5)), []);
      else if (line.startsWith('topic ')) rules.get(user)!.push(line);
    }
    const cn = (certFile: string): string => {
      const subject = execFileSync('openssl', ['x509', '-in', certFile, '-noout', '-subject'], {
        encoding: 'utf8',
      });
      return /CN\s*=\s*([^,\n]+)/.exec(subject)![1]!.trim();
    };
    for (const [name, s] of Object.entries(services)) {
      const env = s.environment ?? {};
      const cert = env['LOADWISE_TLS_CERT'] ?? env['LOADWISE_GW_TLS_CERT'];
      if (!cert) continue;
      const identity = cn(path.join(certDir, path.basename(hostPath(s, cert)!)));
      if (isAgent(s)) {
        expect({ name, rules: rules.get(identity) }).toEqual({
          name,
          rules: [`topic write loadwise/v1/backends/${env['LOADWISE_BACKEND_ID']}/+`],
        });
      } else {
        expect({ name, rules: rules.get(identity) }).toEqual({
          name,
          rules: ['topic read loadwise/v1/backends/+/+'],
        });
      }
    }
    // The broker's server certificate was made for the host name clients use.
    const san = execFileSync(
      'openssl',
      ['x509', '-in', path.join(certDir, 'server.pem'), '-noout', '-ext', 'subjectAltName'],
      {
        encoding: 'utf8',
      },
    );
    expect(san).toContain('DNS:mosquitto');
    expect(statSync(path.join(certDir, 'server.key')).mode & 0o004).toBe(0o004); // readable by the broker's user
  });

  it('signs every agent report with a key the gateway holds for that backend alone', () => {
    const gateway = Object.values(services).find(isGateway)!;
    const gatewayEnv = localEnv(gateway);
    // Without keys the gateway counts no report (and unsigned ones are no substitute here).
    expect(gatewayEnv['LOADWISE_GW_KEY_FILE']).toBeDefined();
    expect(gatewayEnv['LOADWISE_GW_ALLOW_UNSIGNED'] ?? '').not.toBe('1');
    // Read as the gateway reads it at start.
    const keys = configFromEnv(gatewayEnv).options.keys ?? [];
    const prefix = gatewayEnv['LOADWISE_GW_PREFIX'] || undefined;
    const agents = Object.entries(services).filter(([, s]) => isAgent(s));
    const backendIds = agents.map(([, s]) => s.environment!['LOADWISE_BACKEND_ID']!);
    expect(agents).toHaveLength(2);
    for (const [name, s] of agents) {
      const keyFile = s.environment!['LOADWISE_KEY_FILE'];
      expect({ name, keyFile }).toEqual({ name, keyFile: expect.any(String) });
      // Each agent sees its own key file only, read-only.
      const mounted = (s.volumes ?? []).filter((v) => v.startsWith('./keys'));
      expect({ name, mounted }).toEqual({
        name,
        mounted: [expect.stringMatching(`:${keyFile}:ro$`)],
      });
      const env = localEnv(s);
      // Read as the agent reads it at start (it refuses a key bound to another backend).
      const key = toAgentOptions(mergeSources({}, env), { requireBroker: false }).signingKey!;
      expect(key).toBeDefined();
      expect(env['LOADWISE_PREFIX'] || undefined).toBe(prefix);
      const backendId = env['LOADWISE_BACKEND_ID']!;
      const report = createEncoder({ backendId, key, ...(prefix && { prefix }) }).status('online');
      const decoded = createDecoder({ keys, ...(prefix && { prefix }) }).decode(
        report.topic,
        report.payload,
      );
      expect({ name, decoded }).toEqual({ name, decoded: expect.objectContaining({ ok: true }) });
      // The gateway's copy of this agent's key signs for its backend only.
      const held = keys.find((k) => k.keyId === key.keyId)!;
      for (const other of backendIds)
        expect({ name, other, may: keyMaySign(held, other) }).toEqual({
          name,
          other,
          may: other === backendId,
        });
    }
    // Keys and certificates stay out of the image (its build context is the repository).
    const ignore = readFileSync(path.join(COMPOSE_DIR, 'Dockerfile.dockerignore'), 'utf8');
    for (const dir of ['examples/compose/certs', 'examples/compose/keys'])
      expect(ignore.split('\n')).toContain(dir);
  });
});

it('gen-keys.sh refuses ids its keys cannot carry, before rewriting any key', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'lw-keys-'));
  try {
    const gen = (...ids: string[]) =>
      spawnSync(path.join(COMPOSE_DIR, 'gen-keys.sh'), [dir, ...ids], { encoding: 'utf8' });
    expect(gen('api-1', 'api-2').status).toBe(0);
    const before = readFileSync(path.join(dir, 'agent-api-1.key'), 'utf8');
    // A key id is agent-<backend> of [A-Za-z0-9._-]: `db:1` and a repeated id made keys
    // neither parser takes, and a bad id half way through had rewritten api-1's key but not
    // gateway.keys (api-1's reports refused after a restart).
    for (const ids of [['api-1', 'db:1'], ['api-1', 'api-1'], ['.hidden'], ['api-1\nevil id']]) {
      const r = gen(...ids);
      expect({ ids, status: r.status }).toEqual({ ids, status: 2 });
      expect(r.stderr).toContain('gen-keys.sh: "');
    }
    expect(readFileSync(path.join(dir, 'agent-api-1.key'), 'utf8')).toBe(before);
    expect(readFileSync(path.join(dir, 'gateway.keys'), 'utf8')).toContain(before.trim());
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
