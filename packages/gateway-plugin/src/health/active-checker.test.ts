import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createEncoder } from '@loadwise/protocol';
import { ActiveChecker, healthCheckUrl } from './active-checker';
import { eligibleIds, fleet, type Fleet } from './test-fleet';

const config = {
  path: '/healthz',
  intervalMs: 1000,
  timeoutMs: 100,
  unhealthyThreshold: 2,
  healthyThreshold: 2,
};

function serve(
  handler: Parameters<typeof createServer>[1],
): Promise<{ url: string; server: Server }> {
  const server = createServer(handler);
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({ url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server }),
    ),
  );
}

describe('ActiveChecker', () => {
  let f: Fleet | undefined;
  afterEach(() => {
    f?.close();
    f = undefined;
    jest.useRealTimers();
  });

  it('checks GET <path> on the backend: < 500 passes; 5xx, refused and timeout fail', async () => {
    const paths: string[] = [];
    const { url, server } = await serve((req, res) => {
      paths.push(req.url ?? '');
      if (req.url === '/base/healthz') res.writeHead(404).end();
      else if (req.url === '/bad/healthz') res.writeHead(503).end();
      // '/hang/healthz' never answers
    });
    f = fleet(['x']);
    // 100 ms for the checks that must time out; 5 s for those that must pass, which a
    // stalled jest worker could otherwise time out too.
    const checker = new ActiveChecker(config, f.registry, Date.now, Math.random);
    const patient = new ActiveChecker(
      { ...config, timeoutMs: 5_000 },
      f.registry,
      Date.now,
      Math.random,
    );
    const run = (target: string, c = checker): Promise<boolean> => {
      const b = f!.backends[0]!;
      Object.defineProperty(b, 'target', { value: new URL(target) });
      return new Promise((resolve) => c.check(b, resolve));
    };
    const runPath = (target: string, c = checker): Promise<boolean> => {
      const b = f!.backends[0]!;
      Object.defineProperty(b, 'target', { value: new URL(target) });
      return new Promise((resolve) => c.check(b, resolve, true));
    };
    try {
      expect(await run(`${url}/base`, patient)).toBe(true);
      expect(await run(`${url}/bad`, patient)).toBe(false);
      expect(await run(`${url}/hang`)).toBe(false);
      expect(await run('http://127.0.0.1:1')).toBe(false);
      // The path check: any answer passes, a 503 too; no answer fails.
      expect(await runPath(`${url}/bad`, patient)).toBe(true);
      expect(await runPath(`${url}/hang`)).toBe(false);
      expect(await runPath('http://127.0.0.1:1')).toBe(false);
      expect(paths).toEqual([
        '/base/healthz',
        '/bad/healthz',
        '/hang/healthz',
        '/bad/healthz',
        '/hang/healthz',
      ]);
    } finally {
      checker.close();
      patient.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('says whether a failed check was answered: a 5xx was, a refused port or a timeout was not', async () => {
    const { url, server } = await serve((req, res) => {
      if (req.url === '/bad/healthz') res.writeHead(503).end();
      // '/hang/healthz' never answers
    });
    f = fleet(['x']);
    const checker = new ActiveChecker(
      { ...config, timeoutMs: 2_000 },
      f.registry,
      Date.now,
      Math.random,
    );
    const run = (target: string): Promise<[boolean, boolean | undefined]> => {
      const b = f!.backends[0]!;
      Object.defineProperty(b, 'target', { value: new URL(target) });
      return new Promise((resolve) =>
        checker.check(b, (ok, _why, answered) => resolve([ok, answered])),
      );
    };
    try {
      expect(await run(`${url}/bad`)).toEqual([false, true]);
      expect(await run('http://127.0.0.1:1')).toEqual([false, false]);
    } finally {
      checker.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('a check that times out on a connection the backend took was answered; one that never connects was not', async () => {
    // An overloaded fleet whose health endpoint answered after timeoutMs, its agents cut off
    // from the broker: counted as no answer, every backend was presumed gone and every
    // request got 503 LW_GW_NO_BACKEND, where panic served them (slow, but served).
    const { url, server } = await serve(() => {
      // never answers: a server that is there, too slow for the check
    });
    f = fleet(['x']);
    const checker = new ActiveChecker(config, f.registry, Date.now, Math.random);
    const run = (target: string, lookup?: unknown): Promise<[boolean, string?, boolean?]> => {
      const b = f!.backends[0]!;
      Object.defineProperty(b, 'target', { value: new URL(target) });
      Object.defineProperty(b, 'lookup', { value: lookup });
      return new Promise((resolve) =>
        checker.check(b, (ok, why, answered) => resolve([ok, why, answered])),
      );
    };
    try {
      expect(await run(`${url}/slow`)).toEqual([false, 'no answer within 100 ms', true]);
      // A connection that never comes (a host that is gone: a lookup that never ends here).
      const never = (): void => {};
      expect(await run(`http://backend.invalid:${new URL(url).port}`, never)).toEqual([
        false,
        'no connection within 100 ms',
        false,
      ]);
    } finally {
      checker.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('decides on the status and closes the connection: an endless body holds no socket', async () => {
    const open = new Set<import('node:net').Socket>();
    const server = createServer((_req, res) => {
      // An event stream at the checked path: it never ends.
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const t = setInterval(() => res.write('data: x\n\n'), 20);
      res.on('close', () => clearInterval(t));
    });
    server.on('connection', (s) => {
      open.add(s);
      s.on('close', () => open.delete(s));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    f = fleet(['x']);
    const checker = new ActiveChecker(
      { ...config, timeoutMs: 5_000 },
      f.registry,
      Date.now,
      Math.random,
    );
    try {
      const b = f.backends[0]!;
      const port = (server.address() as AddressInfo).port;
      Object.defineProperty(b, 'target', { value: new URL(`http://127.0.0.1:${port}`) });
      expect(await new Promise<boolean>((resolve) => checker.check(b, resolve))).toBe(true);
      // The check's connection closes with its verdict, instead of streaming for good.
      const deadline = Date.now() + 2_000;
      while (open.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(open.size).toBe(0);
    } finally {
      checker.close();
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('fails a check whose status line trickles in past timeoutMs (a deadline, not an idle timeout)', async () => {
    const raw = await import('node:net');
    const head = 'HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n';
    const server = raw.createServer((socket) => {
      socket.on('error', () => {});
      let i = 0;
      // One byte every 30 ms: never 100 ms idle, the whole head in about 1.2 s.
      const t = setInterval(() => {
        if (i < head.length) socket.write(head[i++]!);
        else clearInterval(t);
      }, 30);
      socket.on('close', () => clearInterval(t));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    f = fleet(['x']);
    const checker = new ActiveChecker(config, f.registry, Date.now, Math.random);
    try {
      const b = f.backends[0]!;
      const port = (server.address() as AddressInfo).port;
      Object.defineProperty(b, 'target', { value: new URL(`http://127.0.0.1:${port}`) });
      // Without a deadline the head arrives whole after about 1.2 s and the check passes.
      const ok = await new Promise<boolean>((resolve) => checker.check(b, resolve));
      expect(ok).toBe(false);
    } finally {
      checker.close();
      await new Promise((r) => server.close(r));
    }
  });

  it('an answered failure counts at once; "no answer" after unhealthyThreshold in a row', () => {
    f = fleet(['a']);
    const checker = new ActiveChecker(config, f.registry, Date.now, Math.random);
    const a = f.backends[0]!;
    const kinds: boolean[] = [];
    // 503, refused, 503, refused...: a live server, never "no answer" (it flapped panic).
    for (const answered of [true, false, true, false]) {
      checker.record(a, false, false, answered ? 'HTTP 503' : 'ECONNREFUSED', answered);
      kinds.push(a.checkAnswered);
    }
    expect(kinds).toEqual([true, true, true, true]);
    // Then refused twice in a row (the threshold): gone, as a crashed pod.
    checker.record(a, false, false, 'ECONNREFUSED', false);
    expect(a.checkAnswered).toBe(false);
    // A pass forgets it all; never answered from the start, unanswered at once.
    checker.record(a, true);
    expect([a.checkAnswered, a.checkUnansweredRun]).toEqual([false, 0]);
    checker.record(a, false, false, 'ECONNREFUSED', false);
    expect(a.checkAnswered).toBe(false);
    checker.close();
  });

  it('marks down after unhealthyThreshold failures and up after healthyThreshold passes', () => {
    f = fleet(['a', 'b', 'c', 'd']);
    const checker = new ActiveChecker(config, f.registry, Date.now, Math.random);
    const a = f.backends[0]!;
    checker.record(a, false);
    expect(eligibleIds(f.registry)).toContain('a');
    checker.record(a, false);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c', 'd']);
    expect(f.seen).toContainEqual([
      'backend-down',
      { id: 'a', reason: 'active health check failed' },
    ]);
    checker.record(a, true);
    expect(eligibleIds(f.registry)).not.toContain('a');
    checker.record(a, true);
    expect(eligibleIds(f.registry)).toContain('a');
    expect(f.seen).toContainEqual(['backend-up', { id: 'a' }]);
    checker.close();
  });

  /** A checker on the (fake) clock, its timers at exactly the interval (no jitter). */
  function fakeClockChecker(fl: Fleet): ActiveChecker {
    return new ActiveChecker(
      config,
      fl.registry,
      () => Date.now(),
      () => 0.5,
    );
  }

  /**
   * A checker on the fake clock over `fl` whose checks `answer` decides (told whether it is
   * a path check), and the fleet's first backend, not watched yet.
   */
  function answeringChecker(
    fl: Fleet,
    answer: (pathOnly: boolean) => boolean,
  ): { checker: ActiveChecker; a: Fleet['backends'][number] } {
    const checker = fakeClockChecker(fl);
    jest
      .spyOn(checker, 'check')
      .mockImplementation((_b, done, pathOnly) => done(answer(pathOnly === true)));
    return { checker, a: fl.backends[0]! };
  }

  /** A fresh signed report for `id` in the fleet's registry. */
  function freshReport(
    fl: Fleet,
    id: string,
    verdict: 'up' | 'down' = 'up',
    intervalMs = 1000,
  ): void {
    const b = fl.backends.find((x) => x.id === id)!;
    const m = createEncoder({ backendId: id, now: () => Date.now() }).metrics({
      intervalMs,
      state: 'online',
      host: { cpuUtilization: 0.1, memoryUtilization: 0.1, memoryAvailableBytes: 1 },
      health: { verdict },
    });
    fl.registry.applyMessage(b, m.message, Date.now());
  }

  it("a stale report's down verdict: the first full checks that pass bring the backend back", () => {
    jest.useFakeTimers({ now: 1_700_000_000_000 });
    f = fleet(['a', 'b', 'c']);
    let answer = false;
    const calls: boolean[] = [];
    const { checker, a } = answeringChecker(f, (pathOnly) => {
      calls.push(pathOnly);
      return answer;
    });
    // The agent said down, then nothing more (it died, or the broker went away).
    freshReport(f, 'a', 'down');
    checker.watch(a);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c']);
    // Stale after three intervals: full checks from then on. While they fail it stays out.
    jest.advanceTimersByTime(5_000);
    expect(calls.filter((pathOnly) => !pathOnly).length).toBeGreaterThan(0);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c']);
    // The service is back: healthyThreshold (2) passing checks and it serves again. Before,
    // it stayed out for as long as no report came.
    answer = true;
    jest.advanceTimersByTime(2_000);
    expect(eligibleIds(f.registry)).toEqual(['a', 'b', 'c']);
    expect(f.seen.at(-1)).toEqual(['backend-up', { id: 'a' }]);
    checker.close();
  });

  it("a down verdict holds for three of its agent's intervals (five minutes at most), checks passing or not", () => {
    jest.useFakeTimers({ now: 1_700_000_000_000 });
    f = fleet(['a', 'b', 'c']);
    const { checker, a } = answeringChecker(f, () => true);
    checker.watch(a);
    // An agent reporting once a minute: stale after 30 s (maxStaleAfterMs), and the full
    // checks from then on pass; its down still speaks until three of its intervals passed.
    freshReport(f, 'a', 'down', 60_000);
    jest.advanceTimersByTime(179_000);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c']);
    jest.advanceTimersByTime(3_000);
    expect(eligibleIds(f.registry)).toEqual(['a', 'b', 'c']);
    // An hour's interval (the agent's largest) is held five minutes, not three hours.
    freshReport(f, 'a', 'down', 3_600_000);
    jest.advanceTimersByTime(299_000);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c']);
    jest.advanceTimersByTime(3_000);
    expect(eligibleIds(f.registry)).toEqual(['a', 'b', 'c']);
    checker.close();
  });

  it('a down verdict lapses once its report is stale when its agent is lost (a Last Will)', () => {
    jest.useFakeTimers({ now: 1_700_000_000_000 });
    f = fleet(['a', 'b', 'c']);
    const { checker, a } = answeringChecker(f, () => true);
    checker.watch(a);
    const agent = createEncoder({ backendId: 'a', now: () => Date.now() });
    const body = {
      intervalMs: 60_000,
      state: 'online' as const,
      host: { cpuUtilization: 0.1, memoryUtilization: 0.1, memoryAvailableBytes: 1 },
      health: { verdict: 'down' as const },
    };
    f.registry.applyMessage(a, agent.metrics(body).message, Date.now());
    f.registry.applyMessage(a, agent.status('offline', { will: true }).message, Date.now());
    // Stale at 30 s; the agent died, so its verdict speaks no more, and a check passes.
    jest.advanceTimersByTime(29_000);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c']);
    jest.advanceTimersByTime(3_000);
    expect(eligibleIds(f.registry)).toEqual(['a', 'b', 'c']);
    checker.close();
  });

  it("a lapsed verdict needs healthyThreshold full passes: the fresh report's path checks do not count", () => {
    jest.useFakeTimers({ now: 1_700_000_000_000 });
    f = fleet(['a', 'b', 'c']);
    const full: boolean[] = [];
    const answers = [true, false];
    const { checker, a } = answeringChecker(f, (pathOnly) => {
      // Path checks (any answer passes one, a 503 too) while the report is fresh; then a
      // flapping service: one full check passes, the next fails.
      if (pathOnly) return true;
      const ok = answers[full.length % answers.length]!;
      full.push(ok);
      return ok;
    });
    checker.watch(a);
    for (let i = 0; i < 3; i++) {
      freshReport(f, 'a', 'down');
      jest.advanceTimersByTime(1000);
    }
    // The report lapses: full checks, pass, fail, pass, fail... never two in a row.
    jest.advanceTimersByTime(8_000);
    expect(full.length).toBeGreaterThan(3);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c']);
    checker.close();
  });

  it('a fresh down verdict is not undone by checks from here: the agent speaks for the service', () => {
    jest.useFakeTimers({ now: 1_700_000_000_000 });
    f = fleet(['a', 'b', 'c']);
    const { checker, a } = answeringChecker(f, () => true);
    checker.watch(a);
    for (let i = 0; i < 4; i++) {
      freshReport(f, 'a', 'down');
      jest.advanceTimersByTime(1000);
    }
    expect(eligibleIds(f.registry)).toEqual(['b', 'c']);
    checker.close();
  });

  it('a fresh report but no answer from here within an interval: a path check', () => {
    jest.useFakeTimers({ now: 1_700_000_000_000 });
    f = fleet(['a', 'b', 'c']);
    let answer = false;
    const calls: boolean[] = [];
    const { checker, a } = answeringChecker(f, (pathOnly) => {
      calls.push(pathOnly);
      return answer;
    });
    checker.watch(a);
    // The agent keeps reporting `up`; the path from this gateway gives no answer.
    for (let i = 0; i < 2; i++) {
      freshReport(f, 'a');
      jest.advanceTimersByTime(1000);
    }
    expect(calls).toEqual([true, true]);
    expect(eligibleIds(f.registry)).toEqual(['b', 'c']);
    expect(f.seen).toContainEqual([
      'backend-down',
      { id: 'a', reason: 'no answer to the path check from this gateway' },
    ]);
    // The path heals: healthyThreshold (2) answers bring it back, the report still fresh.
    answer = true;
    for (let i = 0; i < 2; i++) {
      freshReport(f, 'a');
      jest.advanceTimersByTime(1000);
    }
    expect(eligibleIds(f.registry)).toContain('a');
    checker.close();
  });

  it("spreads backends' first checks over the first interval, then checks each every interval ±10%", () => {
    jest.useFakeTimers({ now: 1_700_000_000_000 });
    f = fleet(['a', 'b', 'c', 'd']);
    const draws = [0, 0.25, 0.5, 0.75];
    let next = 0;
    const checker = new ActiveChecker(
      config,
      f.registry,
      () => Date.now(),
      () => draws[next++ % draws.length]!,
    );
    const at: [string, number][] = [];
    const start = Date.now();
    jest.spyOn(checker, 'check').mockImplementation((b, done) => {
      at.push([b.id, Date.now() - start]);
      done(true);
    });
    for (const b of f.backends) checker.watch(b);
    jest.advanceTimersByTime(760);
    // Before: all four at 0.9-1.1 s, and three gateways' in one 200 ms window.
    expect(at).toEqual([
      ['a', 0],
      ['b', 250],
      ['c', 500],
      ['d', 750],
    ]);
    // Then each every 0.9-1.1 s.
    jest.advanceTimersByTime(5_000);
    for (const id of ['a', 'b', 'c', 'd']) {
      const times = at.filter(([x]) => x === id).map(([, t]) => t);
      const gaps = times.slice(1).map((t, i) => t - times[i]!);
      expect(gaps.length).toBeGreaterThanOrEqual(4);
      for (const gap of gaps) expect(gap >= 900 && gap <= 1_100).toBe(true);
    }
    checker.close();
  });

  it('a fresh report and an answer from here within the interval: no check at all', () => {
    jest.useFakeTimers({ now: 1_700_000_000_000 });
    f = fleet(['a', 'b']);
    const checker = fakeClockChecker(f);
    const a = f.backends[0]!;
    const check = jest.spyOn(checker, 'check');
    checker.watch(a);
    for (let i = 0; i < 3; i++) {
      freshReport(f, 'a');
      a.lastAnsweredAtMs = Date.now();
      jest.advanceTimersByTime(1000);
    }
    expect(check).not.toHaveBeenCalled();
    checker.close();
  });

  it('a fresh report clears a full check verdict: at once with traffic, at the first answer without', () => {
    jest.useFakeTimers({ now: 1_700_000_000_000 });
    f = fleet(['a', 'b', 'c', 'd', 'e']);
    const checker = fakeClockChecker(f);
    const [a, b] = [f.backends[0]!, f.backends[1]!];
    // Both were marked down by full checks (5xx) before their agents reported.
    for (const x of [a, b]) {
      checker.record(x, false);
      checker.record(x, false);
    }
    expect(eligibleIds(f.registry)).toEqual(['c', 'd', 'e']);
    const check = jest.spyOn(checker, 'check').mockImplementation((_b, done) => done(true));
    freshReport(f, 'a');
    freshReport(f, 'b');
    a.lastAnsweredAtMs = Date.now();
    checker.watch(a);
    checker.watch(b);
    jest.advanceTimersByTime(1000);
    // a: traffic proves the path, no check; b: one answer to the path check (healthyThreshold
    // is 2), since the agent speaks for the service now.
    expect(check.mock.calls.map(([x]) => x.id)).toEqual(['b']);
    expect(eligibleIds(f.registry)).toEqual(['a', 'b', 'c', 'd', 'e']);
    checker.close();
  });
});

describe('healthCheckUrl', () => {
  it.each([
    ['/health', 'http://10.0.0.1:8080', 'http://10.0.0.1:8080/health'],
    ['/health', 'http://10.0.0.1:8080/api', 'http://10.0.0.1:8080/api/health'],
    ['/health', 'http://10.0.0.1:8080/api/', 'http://10.0.0.1:8080/api/health'],
    ['/', 'http://10.0.0.1:8080/api', 'http://10.0.0.1:8080/api/'],
    // Resolved as a reference, `health:` was a scheme, and the check threw from its timer.
    ['/health:check', 'http://10.0.0.1:8080/api', 'http://10.0.0.1:8080/api/health:check'],
  ])('%s under %s', (path, target, url) => {
    expect(healthCheckUrl(path, new URL(target)).href).toBe(url);
  });
});
