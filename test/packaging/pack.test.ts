/**
 * The packages as a user gets them: `npm pack` each workspace, install the
 * tarballs (with express) into an empty project outside the monorepo, compile
 * a TypeScript consumer there with "module": "node16" (a CommonJS .ts and an
 * ES module .mts), run it and a plain CommonJS .cjs file, and run the packed
 * bins. Checks what is in each tarball and that package.json declares what
 * dist/ requires.
 *
 * Slow (an npm install, a TypeScript compile): `npm run test:pack`, not part
 * of `npm test`. Needs the build (`tsc -b`, which the script runs) and the
 * npm registry or npm's cache.
 */
import { execFile, type ExecFileException } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { existsSync, readFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import os from 'node:os';
import path from 'node:path';

const ROOT = path.resolve(__dirname, '../..');
const CONSUMER = path.join(__dirname, 'consumer');
const WORKSPACES = ['protocol', 'health-agent', 'gateway-plugin'] as const;
type Workspace = (typeof WORKSPACES)[number];

interface PackResult {
  name: string;
  version: string;
  filename: string;
  files: { path: string }[];
}

interface Manifest {
  name: string;
  version: string;
  main?: string;
  types?: string;
  bin?: Record<string, string>;
  exports?: Record<string, string | Record<string, string>>;
  dependencies?: Record<string, string>;
  peerDependencies?: Record<string, string>;
  peerDependenciesMeta?: Record<string, { optional?: boolean }>;
}

function run(
  cmd: string,
  args: string[],
  cwd: string,
  timeoutMs = 180_000,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      cmd,
      args,
      { cwd, timeout: timeoutMs, maxBuffer: 32 * 1024 * 1024, env: { ...process.env } },
      (err: ExecFileException | null, stdout, stderr) => {
        resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
      },
    );
  });
}

function manifest(ws: Workspace): Manifest {
  return JSON.parse(readFileSync(path.join(ROOT, 'packages', ws, 'package.json'), 'utf8'));
}

/** `lodash/fp` → lodash, `@scope/x/y` → @scope/x; undefined for relative paths and builtins. */
function packageOf(specifier: string): string | undefined {
  if (specifier.startsWith('.') || specifier.startsWith('/') || specifier.startsWith('node:'))
    return undefined;
  const parts = specifier.split('/');
  const name = specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
  return builtinModules.includes(name) ? undefined : name;
}

/** Bare modules a compiled file requires (CommonJS output: require("x")) or a d.ts imports. */
function importsOf(text: string): string[] {
  const out = new Set<string>();
  for (const m of text.matchAll(/\brequire\(\s*['"]([^'"]+)['"]\s*\)/g)) out.add(m[1]!);
  for (const m of text.matchAll(/\brequire\.resolve\(\s*['"]([^'"]+)['"]/g)) out.add(m[1]!);
  for (const m of text.matchAll(/\bfrom\s+['"]([^'"]+)['"]/g)) out.add(m[1]!);
  for (const m of text.matchAll(/\bimport\(\s*['"]([^'"]+)['"]\s*\)/g)) out.add(m[1]!);
  return [...out].map(packageOf).filter((n): n is string => n !== undefined);
}

describe('packed packages in an empty project', () => {
  let tmp: string;
  let app: string;
  const packed = new Map<Workspace, PackResult>();

  beforeAll(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'lw-pack-'));
    if (tmp.startsWith(ROOT)) throw new Error(`${tmp} is inside the repository`);
    const pack = await run(
      'npm',
      [
        'pack',
        '--json',
        '--pack-destination',
        tmp,
        ...WORKSPACES.flatMap((w) => ['-w', `packages/${w}`]),
      ],
      ROOT,
    );
    if (pack.code !== 0) throw new Error(`npm pack failed:\n${pack.stderr}`);
    const results = JSON.parse(pack.stdout) as PackResult[];
    for (const ws of WORKSPACES) {
      const r = results.find((x) => x.name === manifest(ws).name);
      if (!r) throw new Error(`npm pack produced nothing for ${ws}`);
      packed.set(ws, r);
    }

    app = path.join(tmp, 'app');
    mkdirSync(app);
    writeFileSync(
      path.join(app, 'package.json'),
      JSON.stringify({ name: 'lw-pack-consumer', version: '1.0.0', private: true }),
    );
    for (const f of readdirSync(CONSUMER)) copyFileSync(path.join(CONSUMER, f), path.join(app, f));
    const install = await run(
      'npm',
      [
        'install',
        '--prefer-offline',
        '--no-audit',
        '--no-fund',
        ...WORKSPACES.map((ws) => path.join(tmp, packed.get(ws)!.filename)),
        'express@^5',
        '@types/express@^5',
        '@types/node@^20',
      ],
      app,
    );
    if (install.code !== 0) throw new Error(`npm install failed:\n${install.stderr}`);
  }, 300_000);

  afterAll(() => {
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  describe.each(WORKSPACES)('%s tarball', (ws) => {
    const files = (): string[] => packed.get(ws)!.files.map((f) => f.path);

    it('holds the build with its declarations, and no sources, maps, tests or build info', () => {
      const list = files();
      expect(list).toEqual(
        expect.arrayContaining(['package.json', 'dist/index.js', 'dist/index.d.ts']),
      );
      const leaks = list.filter(
        (f) =>
          f.startsWith('src/') ||
          f.endsWith('.map') ||
          f.endsWith('.tsbuildinfo') ||
          /\.test\.|(^|\/)test-[^/]*$/.test(f),
      );
      expect(leaks).toEqual([]);
      for (const js of list.filter((f) => f.startsWith('dist/') && f.endsWith('.js'))) {
        expect(list).toContain(js.replace(/\.js$/, '.d.ts'));
        // No stale output: every built file still has its source.
        const source = path.join(
          ROOT,
          'packages',
          ws,
          js.replace(/^dist\//, 'src/').replace(/\.js$/, '.ts'),
        );
        expect({ js, sourceExists: existsSync(source) }).toEqual({ js, sourceExists: true });
      }
    });

    it('ships what main, types, exports and bin point at', () => {
      const m = manifest(ws);
      const list = files();
      const targets = [m.main, m.types, ...Object.values(m.bin ?? {})];
      for (const e of Object.values(m.exports ?? {})) {
        for (const t of typeof e === 'string' ? [e] : Object.values(e)) targets.push(t);
      }
      for (const t of targets.filter((x): x is string => x !== undefined)) {
        const rel = t.replace(/^\.\//, '');
        if (rel.endsWith('/*')) {
          expect(list.some((f) => f.startsWith(rel.slice(0, -1)))).toBe(true);
        } else {
          expect(list).toContain(rel);
        }
      }
      for (const bin of Object.values(m.bin ?? {})) {
        expect(readFileSync(path.join(ROOT, 'packages', ws, bin), 'utf8')).toMatch(
          /^#!\/usr\/bin\/env node\n/,
        );
      }
    });

    it('points bin at committed files, so npm links them in a fresh clone before the build', async () => {
      for (const bin of Object.values(manifest(ws).bin ?? {})) {
        expect(bin.startsWith('dist/')).toBe(false);
        const tracked = await run(
          'git',
          ['ls-files', '--error-unmatch', bin],
          path.join(ROOT, 'packages', ws),
        );
        expect({ bin, tracked: tracked.code === 0 }).toEqual({ bin, tracked: true });
      }
    });

    it('declares every package dist/ requires, and requires every runtime dependency it declares', () => {
      const m = manifest(ws);
      const declared = new Set([
        ...Object.keys(m.dependencies ?? {}),
        ...Object.keys(m.peerDependencies ?? {}),
      ]);
      const used = new Set<string>();
      for (const f of files().filter((x) => /\.(js|d\.ts)$/.test(x))) {
        for (const name of importsOf(readFileSync(path.join(ROOT, 'packages', ws, f), 'utf8')))
          used.add(name);
      }
      expect([...used].filter((n) => !declared.has(n))).toEqual([]);
      expect(Object.keys(m.dependencies ?? {}).filter((n) => !used.has(n))).toEqual([]);
      // Workspace siblings are pinned to the version released with them.
      for (const [dep, range] of Object.entries(m.dependencies ?? {})) {
        if (dep.startsWith('@loadwise/')) {
          const sibling = WORKSPACES.find((w) => manifest(w).name === dep)!;
          expect(range).toBe(manifest(sibling).version);
        }
      }
    });
  });

  it('express: an optional peer of the gateway, no dependency of the agent', () => {
    const gw = manifest('gateway-plugin');
    expect(gw.peerDependencies?.['express']).toBeDefined();
    expect(gw.peerDependenciesMeta?.['express']?.optional).toBe(true);
    expect(gw.dependencies?.['express']).toBeUndefined();
    const agent = manifest('health-agent');
    expect(agent.dependencies?.['express']).toBeUndefined();
    expect(agent.peerDependencies?.['express']).toBeUndefined();
    // Installed: one @loadwise/protocol for both, nothing nested under the packages.
    for (const ws of ['health-agent', 'gateway-plugin'])
      expect(existsSync(path.join(app, 'node_modules/@loadwise', ws, 'node_modules'))).toBe(false);
  });

  it('compiles a node16 TypeScript consumer (CommonJS .ts and ES module .mts) against the declarations', async () => {
    const tsc = path.join(ROOT, 'node_modules/typescript/bin/tsc');
    const r = await run(process.execPath, [tsc, '-p', '.'], app);
    // Our declarations and the consumer must type-check strictly
    // (skipLibCheck off). mqtt's own types reach for DOM names (Worker,
    // MessagePort) a Node project does not have; those are not ours.
    const errors = r.stdout.split('\n').filter((l) => /error TS\d+/.test(l));
    const ours = errors.filter(
      (l) => !l.startsWith('node_modules/') || l.startsWith('node_modules/@loadwise/'),
    );
    expect(ours).toEqual([]);
    expect(existsSync(path.join(app, 'dist/consumer.js'))).toBe(true);
    expect(existsSync(path.join(app, 'dist/esm.mjs'))).toBe(true);
  }, 120_000);

  it('runs the gateway, an agent and a backend as the README shows, from the installed packages', async () => {
    const r = await run(process.execPath, ['dist/consumer.js'], app, 60_000);
    // The default logger's two lines: the agent stopped, so the backend is down (a CI run saw
    // it race the gateway's close when the consumer did not wait for it), and it was the only
    // one, so nothing routable is left. Each is written as it comes; their order is not the
    // point.
    expect(r.stderr.split('\n').filter(Boolean).sort()).toEqual([
      '[loadwise] error: no routable backend is left (every one is draining, stopped, presumed ' +
        'gone or replaced); requests get 503 LW_GW_NO_BACKEND ' +
        '{"event":"panic","panic":false,"healthy":0,"routable":0}',
      '[loadwise] warn: backend api-1 down: agent reported offline ' +
        '{"event":"backend-down","backend":"api-1","reason":"agent reported offline"}',
    ]);
    expect(JSON.parse(r.stdout)).toEqual({
      decoded: { kind: 'status', state: 'draining', reason: 'pack test' },
      proxied: { status: 200, body: 'hello from api-1' },
      reportFresh: true,
      errorCode: 'LW_GW_NO_BACKENDS',
    });
  }, 60_000);

  it('runs as an ES module with named imports of the CommonJS packages', async () => {
    const r = await run(process.execPath, ['dist/esm.mjs'], app, 30_000);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({
      decodedOk: true,
      topic: 'loadwise/v1/backends/esm-1/status',
      strategies: expect.any(Number),
      agentState: 'online',
      defaultIntervalMs: 1000,
    });
  }, 30_000);

  it('runs as plain CommonJS JavaScript', async () => {
    const r = await run(process.execPath, ['plain.cjs'], app, 30_000);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({
      decoded: 0.5,
      sampleQueue: { inFlight: 0, queued: 0 },
      middleware: true,
    });
  }, 30_000);

  it('links and runs the loadwise-agent and loadwise bins', async () => {
    const bin = (name: string): string => path.join(app, 'node_modules/.bin', name);
    const agentHelp = await run(bin('loadwise-agent'), ['--help'], app, 30_000);
    expect(agentHelp.code).toBe(0);
    expect(agentHelp.stdout).toMatch(/^Usage: loadwise-agent \[options\]/);
    expect(agentHelp.stdout).toContain('loadwise-agent undrain');
    const version = await run(bin('loadwise-agent'), ['--version'], app, 30_000);
    expect(version.stdout.trim()).toBe(manifest('health-agent').version);
    const once = await run(
      bin('loadwise-agent'),
      ['--once', '--backend-id', 'packed', '--no-cgroup'],
      app,
      30_000,
    );
    expect(once.code).toBe(0);
    expect(JSON.parse(once.stdout)).toMatchObject({ kind: 'metrics', backendId: 'packed' });

    const gwHelp = await run(bin('loadwise'), ['--help'], app, 30_000);
    expect(gwHelp.code).toBe(0);
    expect(gwHelp.stdout).toMatch(/^Usage: loadwise status --url <status url>/);
    const gwVersion = await run(bin('loadwise'), ['--version'], app, 30_000);
    expect(gwVersion.stdout.trim()).toBe(manifest('gateway-plugin').version);
  }, 60_000);
});
