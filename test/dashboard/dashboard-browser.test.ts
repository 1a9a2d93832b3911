/**
 * The dashboard in a real browser: Debian's Chromium driven by playwright-core.
 * A gateway over three real backends (HTTP servers on port 0 with the
 * request tracker) and their health agents (createAgent, publishing to an
 * embedded broker), all in this process so the test starts in a second or
 * two, plus light load. The page shows the three; one backend is killed (its
 * server closes and drops its connections, so connections are refused and
 * its agent's probe fails), and the page must show its state change within a
 * deadline: the time it took is printed and appended to
 * test-output/dashboard-timings.jsonl. A wrong or missing token gets 401. A
 * screenshot goes to test-output/dashboard.png. A second gateway, with more
 * backends than a frame details, shows that many rows and how many more
 * there are.
 *
 * Chromium: /usr/bin/chromium (CHROMIUM_PATH overrides). Missing outside CI,
 * the test is skipped with a loud warning; in CI (CI=true, where .ci/run
 * installs it) a missing browser fails the test.
 */
import { randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { createAgent, trackRequests, type Agent } from '@loadwise/health-agent';
import { startEmbeddedBroker } from '@loadwise/gateway-plugin';
import { MAX_DETAILED_BACKENDS } from '../../packages/gateway-plugin/src/dashboard/frame';
import { uniquePrefix } from '../kit/brokers';
import { eventually } from '../kit/fleet';
import { listen, type TestServer } from '../kit/http';
import { startGateway, type TestGateway } from '../kit/gateway';
import { startLoad, type RunningLoad } from '../kit/load';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const IN_CI = process.env.CI === 'true';
const HAVE_CHROMIUM = existsSync(CHROMIUM);
const OUT_DIR = path.join(__dirname, '..', '..', 'test-output');
const TOKEN = 'dash-browser-0123456789';
/** How long the page may take to show a killed backend's new state (detection + one tick). */
const STATE_CHANGE_DEADLINE_MS = 10_000;

if (!HAVE_CHROMIUM && !IN_CI) {
  console.warn(
    [
      '',
      '*********************************************************************',
      `* SKIPPED: the dashboard browser test: no Chromium at ${CHROMIUM}.`,
      '* Install it (apt-get install chromium) or set CHROMIUM_PATH.',
      '* In CI (CI=true) this test fails instead of skipping.',
      '*********************************************************************',
      '',
    ].join('\n'),
  );
}

const describeBrowser = HAVE_CHROMIUM || IN_CI ? describe : describe.skip;

describeBrowser('dashboard in Chromium', () => {
  let broker: { url: string; close(): Promise<void> } | undefined;
  const backends: { id: string; server: TestServer; agent: Agent }[] = [];
  let gw: TestGateway | undefined;
  let load: RunningLoad | undefined;
  let context: BrowserContext | undefined;
  let profileDir: string | undefined;

  beforeAll(async () => {
    broker = await startEmbeddedBroker();
    const prefix = uniquePrefix('dashboard');
    // The gateway refuses unsigned reports by default: the agents sign.
    const key = { keyId: 'dashboard-test', secret: randomBytes(32) };
    for (const id of ['b1', 'b2', 'b3']) {
      const tracker = trackRequests({ concurrencyLimit: 8 });
      const app = express();
      app.use(tracker);
      app.get('/health', (_req, res) => {
        res.send('ok');
      });
      app.get('/work', (_req, res) => {
        setTimeout(() => res.send(id), 10);
      });
      const server = await listen(createServer(app));
      const agent = createAgent({
        backendId: id,
        broker: { url: broker.url },
        prefix,
        intervalMs: 250,
        jitterMs: 0,
        queue: { source: 'tracker', tracker },
        // Generous: on a loaded machine a slow probe must not read as "down". A
        // killed backend refuses at once, so this does not slow detection.
        probe: { url: `${server.url}/health`, timeoutMs: 3000 },
        cgroup: false,
        signingKey: key,
      });
      backends.push({ id, server, agent });
      await agent.start();
    }
    gw = await startGateway({
      backends: backends.map((b) => ({ id: b.id, url: b.server.url })),
      broker: broker.url,
      topicPrefix: prefix,
      keys: [key],
      dashboard: { token: TOKEN },
      healthCheck: { path: '/health', intervalMs: 250, timeoutMs: 3000 },
    });
    await eventually(
      () => gw!.snapshot().backends.every((b) => b.reportFresh && b.state === 'healthy'),
      20_000,
      () =>
        `fresh reports, all healthy: ${JSON.stringify(gw!.snapshot().backends.map((b) => [b.id, b.state, b.stateReason, b.reportFresh]))}`,
    );
    // Light traffic (a few dozen req/s, bounded) so shares and latencies are real.
    load = startLoad({ url: `${gw.url}/work`, total: 20_000, concurrency: 2, thinkMs: 40 });
    profileDir = mkdtempSync(path.join(tmpdir(), 'lw-chromium-'));
    // A fresh profile directory per run (launchPersistentContext passes it as --user-data-dir).
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1400, height: 1000 },
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  }, 60_000);

  afterAll(async () => {
    await context?.close();
    if (profileDir) rmSync(profileDir, { recursive: true, force: true });
    await load?.stop();
    await gw?.close();
    await Promise.all(backends.map((b) => b.agent.stop({ graceMs: 0 })));
    await Promise.all(backends.map((b) => b.server.close()));
    await broker?.close();
  });

  const pageUrl = (token?: string): string =>
    `${gw!.url}/_lb/dashboard${token === undefined ? '' : `?token=${encodeURIComponent(token)}`}`;

  it('refuses a missing or wrong token (401)', async () => {
    const page = await context!.newPage();
    try {
      expect((await page.goto(pageUrl()))!.status()).toBe(401);
      expect((await page.goto(pageUrl('dash-browser-wrong-token')))!.status()).toBe(401);
      expect(await page.content()).not.toContain('b1');
    } finally {
      await page.close();
    }
  });

  it('shows three backends, then a killed one changes state within seconds', async () => {
    const page = await context!.newPage();
    try {
      const response = await page.goto(pageUrl(TOKEN));
      expect(response!.status()).toBe(200);
      await poll(
        async () => (await page.locator('tr[data-backend]').count()) === 3,
        10_000,
        'three backend rows',
      );
      await poll(
        async () => Object.values(await rowStates(page)).every((st) => st === 'healthy'),
        10_000,
        'three healthy rows',
      );
      expect(await page.textContent('#conn')).toBe('live');
      // A few seconds of history, so the charts have lines before the kill.
      await framesAtLeast(page, 3);

      const killedAt = Date.now();
      await backends[1]!.server.close();
      let gatewayMs: number | undefined;
      const gatewaySaw = (async () => {
        while (gw!.backend('b2').state === 'healthy' && Date.now() - killedAt < 15_000) {
          await new Promise((r) => setTimeout(r, 20));
        }
        gatewayMs = Date.now() - killedAt;
      })();
      await poll(
        async () => (await rowState(page, 'b2')) !== 'healthy',
        STATE_CHANGE_DEADLINE_MS,
        'b2 no longer healthy on the page',
      );
      const pageMs = Date.now() - killedAt;
      await gatewaySaw;
      const states = await rowStates(page);
      const reason = await page.textContent('tr[data-backend="b2"] .reason');
      const timing = {
        at: new Date().toISOString(),
        killToPageMs: pageMs,
        killToGatewayMs: gatewayMs,
        state: states.b2,
        reason,
      };
      console.log(`dashboard: b2 killed, shown on the page after ${pageMs} ms`, timing);
      mkdirSync(OUT_DIR, { recursive: true });
      appendFileSync(path.join(OUT_DIR, 'dashboard-timings.jsonl'), `${JSON.stringify(timing)}\n`);

      expect(['down', 'ejected']).toContain(states.b2);
      expect(states.b1).toBe('healthy');
      expect(states.b3).toBe('healthy');
      expect(reason).toBeTruthy();
      // The recent events list names it too.
      await poll(
        async () =>
          (await page.locator('#events li').allTextContents()).some((t) =>
            /backend b2 (down|ejected)/.test(t),
          ),
        5_000,
        'an event about b2',
      );

      // A few more seconds so the charts show the shift, then the picture.
      await framesAtLeast(page, (await frames(page)) + 3);
      await page.screenshot({ path: path.join(OUT_DIR, 'dashboard.png'), fullPage: true });
    } finally {
      await page.close();
    }
  }, 60_000);
});

describeBrowser('dashboard in Chromium, a fleet above MAX_DETAILED_BACKENDS', () => {
  const FLEET = MAX_DETAILED_BACKENDS + 50;
  let gw: TestGateway | undefined;
  let context: BrowserContext | undefined;
  let profileDir: string | undefined;

  beforeAll(async () => {
    // Nothing is sent to them (no traffic, no health checks): addresses are enough.
    gw = await startGateway({
      backends: Array.from({ length: FLEET }, (_, i) => ({
        id: `backend-${String(i).padStart(3, '0')}`,
        url: `http://127.0.0.1:${20000 + i}`,
      })),
      healthCheck: false,
      dashboard: { token: TOKEN, intervalMs: 250 },
    });
    profileDir = mkdtempSync(path.join(tmpdir(), 'lw-chromium-'));
    context = await chromium.launchPersistentContext(profileDir, {
      executablePath: CHROMIUM,
      headless: true,
      viewport: { width: 1400, height: 1000 },
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'],
    });
  }, 60_000);

  afterAll(async () => {
    await context?.close();
    if (profileDir) rmSync(profileDir, { recursive: true, force: true });
    await gw?.close();
  });

  it('lists MAX_DETAILED_BACKENDS rows, says how many more there are, and counts the whole fleet', async () => {
    const page = await context!.newPage();
    try {
      await page.goto(`${gw!.url}/_lb/dashboard?token=${TOKEN}`);
      await poll(
        async () => (await page.locator('tr[data-backend]').count()) === MAX_DETAILED_BACKENDS,
        10_000,
        `${MAX_DETAILED_BACKENDS} backend rows`,
      );
      const omitted = page.locator('tr.omitted');
      expect(await omitted.getAttribute('data-omitted')).toBe('50');
      expect(await omitted.textContent()).toContain('50 more backends not shown');
      expect(await page.textContent('#routing')).toBe(`${FLEET} of ${FLEET} backends healthy`);
      // The page keeps drawing ticks (the charts have a line per listed backend).
      await framesAtLeast(page, 3);
      expect(await page.textContent('#conn')).toBe('live');
    } finally {
      await page.close();
    }
  }, 60_000);
});

/*
 * The page is read through locators, polled from here with a deadline: the
 * page's Content-Security-Policy (no eval) rightly refuses the string
 * predicates of page.waitForFunction, and the CSP stays on in this test.
 */
async function poll(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`${what}: not seen within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function rowState(page: Page, id: string): Promise<string | null> {
  return page.locator(`tr[data-backend="${id}"]`).getAttribute('data-state', { timeout: 1000 });
}

async function rowStates(page: Page): Promise<Record<string, string | null>> {
  const states: Record<string, string | null> = {};
  for (const id of ['b1', 'b2', 'b3']) states[id] = await rowState(page, id);
  return states;
}

async function frames(page: Page): Promise<number> {
  return Number(await page.locator('body').getAttribute('data-frames'));
}

async function framesAtLeast(page: Page, n: number): Promise<void> {
  await poll(async () => (await frames(page)) >= n, 20_000, `${n} frames drawn`);
}
