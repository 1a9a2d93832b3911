/**
 * Proof: planned maintenance ends without a restart. `loadwise-agent drain`
 * signals a running agent (SIGUSR2), the gateway stops sending it new
 * requests; `loadwise-agent undrain` (SIGHUP) makes the same agent process
 * publish `online` again and the backend is back in rotation.
 */
import { spawnScript, AGENT_BIN } from '../kit/agent-cli';
import { brokerTargets } from '../kit/brokers';
import { eventually, type Fleet } from '../kit/fleet';
import { startFleetGateway, type TestGateway } from '../kit/gateway';
import { fire, failed } from '../kit/load';

describe.each(brokerTargets())('drain and undrain a running agent, on $name', (target) => {
  let broker: { url: string; close(): Promise<void> };
  let fleet: Fleet | undefined;
  let gw: TestGateway | undefined;

  beforeAll(async () => {
    broker = await target.start();
    ({ fleet, gw } = await startFleetGateway({
      brokerUrl: broker.url,
      label: 'undrain',
      backends: ['a', 'b'].map((id) => ({ id, slots: 4, serviceMs: 5 })),
    }));
  }, 30_000);

  afterAll(async () => {
    await gw?.close();
    await fleet?.close();
    await broker?.close();
  });

  async function control(command: 'drain' | 'undrain', pid: number): Promise<string> {
    const p = spawnScript(AGENT_BIN, [command, '--pid', String(pid)]);
    expect(await p.exited).toBe(0);
    return p.stdout();
  }

  it('takes the backend out on drain and puts it back on undrain, same agent process', async () => {
    const agent = fleet!.get('a').agent!;
    const pid = agent.pid;

    expect(await control('drain', pid)).toBe(`sent SIGUSR2 (drain) to ${pid}\n`);
    await eventually(() => gw!.backend('a').state === 'draining', 10_000, 'a draining');
    const during = await fire({ url: `${gw!.url}/work`, total: 60, concurrency: 4 });
    expect(failed(during)).toBe(0);
    expect(during.servedBy.get('a') ?? 0).toBe(0);

    expect(await control('undrain', pid)).toBe(`sent SIGHUP (undrain) to ${pid}\n`);
    await eventually(() => gw!.backend('a').state === 'healthy', 10_000, 'a healthy again');
    await agent.waitForStderr(/SIGHUP: drain ended, back online/, 5_000);
    // Back in rotation: with both backends eligible, `a` serves part of the
    // load again (the bound is loose; the point is that it is not zero).
    let servedByA = 0;
    await eventually(
      async () => {
        const after = await fire({ url: `${gw!.url}/work`, total: 60, concurrency: 4 });
        expect(failed(after)).toBe(0);
        servedByA += after.servedBy.get('a') ?? 0;
        return servedByA > 0;
      },
      10_000,
      () => `a served ${servedByA} requests after undrain`,
    );
    expect(agent.running).toBe(true); // no restart
  }, 40_000);

  it('ignores undrain when the agent is not draining', async () => {
    const agent = fleet!.get('b').agent!;
    await control('undrain', agent.pid);
    await agent.waitForStderr(/SIGHUP: not in planned maintenance \(state online\); ignored/);
    expect(gw!.backend('b').state).toBe('healthy');
    expect(agent.running).toBe(true);
  }, 15_000);
});
