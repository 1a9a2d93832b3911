import type { LookupAddress } from 'node:dns';
import { createCachedLookup, type LookupAll } from './dns-cache';

type Answer = { err: NodeJS.ErrnoException | null; addresses: LookupAddress[] };

/** A resolver answered by hand: each call waits until the test answers it. */
function resolver() {
  const calls: Array<{ hostname: string; answer: (a: Answer) => void }> = [];
  const lookup: LookupAll = (hostname, _options, callback) =>
    calls.push({ hostname, answer: ({ err, addresses }) => callback(err, addresses) });
  return { calls, lookup };
}

const v4 = (address: string): LookupAddress => ({ address, family: 4 });
const fail = (code: string): Answer => ({
  err: Object.assign(new Error(code), { code }),
  addresses: [],
});

type Result = { err: string | null; address: unknown; family?: number };

/** One connection's lookup, as net.connect asks it (`all`: autoSelectFamily). */
function resolve(l: ReturnType<typeof createCachedLookup>, all = false): Promise<Result> {
  return new Promise((done) =>
    l('api.internal', { all, family: 0 }, (err, address, family) =>
      done({ err: err?.code ?? null, address, family }),
    ),
  );
}

/** Resolves `api.internal` once to `address`, so that a last good answer exists. */
async function resolvedOnce(address: string, now = () => 0) {
  const r = resolver();
  const l = createCachedLookup({ lookup: r.lookup, staleAfterMs: 1_000, keepMs: 60_000, now });
  const first = resolve(l);
  r.calls[0]!.answer({ err: null, addresses: [v4(address)] });
  await first;
  return { r, l };
}

describe('createCachedLookup', () => {
  afterEach(() => jest.useRealTimers());

  it('shares one lookup among the connections that ask together, and answers both shapes', async () => {
    const r = resolver();
    const l = createCachedLookup({ lookup: r.lookup });
    const one = resolve(l);
    const all = resolve(l, true);
    expect(r.calls).toHaveLength(1);
    r.calls[0]!.answer({ err: null, addresses: [v4('10.0.0.1'), v4('10.0.0.2')] });
    expect(await one).toEqual({ err: null, address: '10.0.0.1', family: 4 });
    expect(await all).toEqual({
      err: null,
      address: [v4('10.0.0.1'), v4('10.0.0.2')],
      family: undefined,
    });
  });

  it('looks the name up for every new connection: a moved name is followed at once', async () => {
    const { r, l } = await resolvedOnce('10.0.0.1');
    const next = resolve(l);
    expect(r.calls).toHaveLength(2);
    r.calls[1]!.answer({ err: null, addresses: [v4('10.0.0.9')] });
    expect((await next).address).toBe('10.0.0.9');
  });

  it('takes the last good answer when the lookup fails (the resolver down: every new connection failed)', async () => {
    const { r, l } = await resolvedOnce('10.0.0.1');
    const next = resolve(l);
    r.calls[1]!.answer(fail('EAI_AGAIN'));
    expect(await next).toEqual({ err: null, address: '10.0.0.1', family: 4 });
  });

  it('takes the last good answer when the resolver is silent for staleAfterMs', async () => {
    const { r, l } = await resolvedOnce('10.0.0.1');
    jest.useFakeTimers();
    let result: Result | undefined;
    void resolve(l).then((x) => (result = x));
    await jest.advanceTimersByTimeAsync(999);
    expect(result).toBeUndefined();
    await jest.advanceTimersByTimeAsync(1);
    expect(result).toEqual({ err: null, address: '10.0.0.1', family: 4 });
    // The lookup finishes later: its answer is the next connection's last good one.
    r.calls[1]!.answer({ err: null, addresses: [v4('10.0.0.7')] });
    const after = resolve(l);
    r.calls[2]!.answer(fail('EAI_AGAIN'));
    expect((await after).address).toBe('10.0.0.7');
  });

  it('fails for a name the resolver says is gone, and for an answer older than keepMs', async () => {
    // A deleted name kept its old address, which a reused pod IP answered for another service.
    const { r, l } = await resolvedOnce('10.0.0.1');
    const gone = resolve(l);
    r.calls[1]!.answer(fail('ENOTFOUND'));
    expect((await gone).err).toBe('ENOTFOUND');
    let t = 0;
    const old = await resolvedOnce('10.0.0.1', () => t);
    t = 60_000;
    const late = resolve(old.l);
    old.r.calls[1]!.answer(fail('EAI_AGAIN'));
    expect((await late).err).toBe('EAI_AGAIN');
  });

  it('answers a lookup that throws with its error, and looks the name up again next time', async () => {
    let calls = 0;
    const l = createCachedLookup({
      lookup: (_h, _o, callback) => {
        if (++calls === 1) throw Object.assign(new TypeError('bad hints'), { code: 'ERR_X' });
        callback(null, [v4('10.0.0.3')]);
      },
    });
    expect((await resolve(l)).err).toBe('ERR_X');
    // Before: the name stayed "under way" for good, and this never answered.
    expect((await resolve(l)).address).toBe('10.0.0.3');
  });

  it('fails as dns.lookup does for a name never resolved, however long the resolver takes', async () => {
    const r = resolver();
    const l = createCachedLookup({ lookup: r.lookup });
    const first = resolve(l);
    r.calls[0]!.answer(fail('ENOTFOUND'));
    expect((await first).err).toBe('ENOTFOUND');
    const second = resolve(l);
    r.calls[1]!.answer({ err: null, addresses: [] });
    expect((await second).err).toBe('ENOTFOUND');
  });
});
