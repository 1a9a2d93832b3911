/**
 * Two gateways on one broker in front of the same backends (README: "beyond
 * one process, run more gateways on the same broker"); one is SIGKILLed in
 * the middle of the load. The other keeps serving without a single error: it
 * shares nothing with its peer but the broker and the backends, whose
 * reports now show the dead gateway's requests gone. The killed one's own
 * clients see their connections cut (printed).
 */
import { forkProc, type Proc } from '../../bench/lib/procs';
import { openLoad, report, scale, sleep, tally, useSignedFleet } from '../kit/chaos';
import { everyBackendHealthy } from '../kit/gateway';

const RUN_MS = scale(2_000, 20_000);
const RATE = scale(50, 80);

let peer: Proc | undefined;

const fleetOf = useSignedFleet({
  label: 'twogw',
  backends: ['a', 'b', 'c'].map((id) => ({ id, slots: 4, serviceMs: 10 })),
});

afterAll(() => peer?.stop(), 30_000);

it('one of two gateways killed mid-load: the other serves on, error-free', async () => {
  const { gw, fleet, keyFile, prefix, brokerUrl } = fleetOf();
  // The peer: the same options in its own process (bench/soak/gateway.ts, built by tsc -b).
  peer = forkProc('peer-gateway', '../soak/gateway.js', {
    options: { backends: fleet.backendConfig(), broker: brokerUrl, topicPrefix: prefix },
    keyFile,
    keepAliveTimeoutMs: 65_000,
  });
  const peerPort = (await peer.waitFor<{ port: number }>('ready')).port;
  const survivorLoad = openLoad({ url: `${gw.url}/work`, rate: RATE, durationMs: RUN_MS * 2 });
  const peerLoad = openLoad({
    url: `http://127.0.0.1:${peerPort}/work`,
    rate: RATE,
    durationMs: RUN_MS * 2,
  });
  await sleep(RUN_MS);
  const killedAtLoad = survivorLoad.now();
  peer.child.kill('SIGKILL');
  const survivor = tally(await survivorLoad.done);
  const afterKill = tally(survivorLoad.records, killedAtLoad);
  const peerSide = tally(await peerLoad.done);
  report('two gateways, one killed', {
    survivorSent: survivor.sent,
    survivorFailures: survivor.failures,
    survivorSentAfterKill: afterKill.sent,
    survivorServedByAfterKill: afterKill.servedBy,
    killedGatewayClients: { sent: peerSide.sent, ok: peerSide.ok, failures: peerSide.failures },
  });
  expect(afterKill.sent).toBeGreaterThan(0);
  expect(survivor.sent - survivor.ok).toBe(0);
  // Its clients were cut, as they would be: the kill was real.
  expect(peerSide.sent - peerSide.ok).toBeGreaterThan(0);
  // Every backend healthy (waited for: one starved probe's "down" ends at the next report).
  await everyBackendHealthy(gw);
}, 90_000);
