import type { LookupAddress } from 'node:dns';
import type { ConnectLookup } from './dns-cache';
import { KEEP_MS } from './dns-cache';
import { NamedServers, REFRESH_MS } from './named-servers';

/** A resolver answering from `table` when `answer()` is called, counting the questions. */
function resolver(table: Record<string, string[] | Error>) {
  const pending: Array<() => void> = [];
  const asked: string[] = [];
  const lookup: ConnectLookup = (hostname, _options, callback) => {
    asked.push(hostname);
    pending.push(() => {
      const a = table[hostname];
      if (a instanceof Error || a === undefined)
        return callback(
          Object.assign(a ?? new Error('ENOTFOUND'), {
            code: (a as NodeJS.ErrnoException | undefined)?.code ?? 'ENOTFOUND',
          }),
          [],
        );
      callback(
        null,
        a.map((address): LookupAddress => ({ address, family: address.includes(':') ? 6 : 4 })),
      );
    });
  };
  const answer = (): void => {
    for (const f of pending.splice(0)) f();
  };
  return { lookup, asked, answer, table };
}

const url = (s: string): URL => new URL(s);

describe('NamedServers: configured backends addressed by name, for discovery', () => {
  it('matches an address a name resolves to on its port, and tells "not resolved yet" apart', () => {
    const r = resolver({ 'api-1.internal': ['10.0.0.5', 'fd00::5'] });
    let t = 0;
    const named = new NamedServers(
      [
        { id: 'api', url: url('http://api-1.internal:8080') },
        // IP literals are the server key already: not looked up.
        { id: 'lit', url: url('http://10.0.0.9:8080') },
        { id: 'v6', url: url('http://[fd00::9]:8080') },
      ],
      r.lookup,
      () => t,
    );
    expect(named.any).toBe(true);
    named.refresh();
    expect(r.asked).toEqual(['api-1.internal']);
    // Before the answer no registration on that port can be told apart from it.
    expect(named.match('10.0.0.7', 8080)).toEqual({
      id: 'api',
      hostname: 'api-1.internal',
      resolved: false,
    });
    // One lookup at a time, however many registrations ask.
    expect(r.asked).toEqual(['api-1.internal']);
    r.answer();
    expect(named.match('10.0.0.5', 8080)).toEqual({
      id: 'api',
      hostname: 'api-1.internal',
      resolved: true,
    });
    expect(named.match('fd00::5', 8080)?.id).toBe('api');
    expect(named.match('10.0.0.7', 8080)).toBeUndefined();
    // Another port is another server.
    expect(named.match('10.0.0.5', 8081)).toBeUndefined();
    // Looked up again only every REFRESH_MS; a failed lookup keeps the answer before.
    named.refresh();
    expect(r.asked).toHaveLength(1);
    t += REFRESH_MS;
    r.table['api-1.internal'] = Object.assign(new Error('resolver down'), { code: 'EAI_AGAIN' });
    named.refresh();
    r.answer();
    expect(r.asked).toHaveLength(2);
    expect(named.match('10.0.0.5', 8080)?.id).toBe('api');
    // A new answer adds to what was seen (round-robin DNS answers a subset each time); an
    // address no answer gave for KEEP_MS is another server's.
    t += REFRESH_MS;
    r.table['api-1.internal'] = ['10.0.0.6'];
    named.refresh();
    r.answer();
    expect(named.match('10.0.0.5', 8080)?.id).toBe('api');
    expect(named.match('10.0.0.6', 8080)?.id).toBe('api');
    for (let i = 0; i < KEEP_MS / REFRESH_MS + 1; i++) {
      t += REFRESH_MS;
      named.refresh();
      r.answer();
    }
    expect(named.match('10.0.0.5', 8080)).toBeUndefined();
    expect(named.match('10.0.0.6', 8080)?.id).toBe('api');
    // Deleted from DNS: no address any more, where the old one was kept for good.
    t += REFRESH_MS;
    delete r.table['api-1.internal'];
    named.refresh();
    r.answer();
    expect(named.match('10.0.0.6', 8080)).toBeUndefined();
    named.close();
  });

  it('takes a name that does not exist as no server, and says which addresses are new to it', () => {
    // Kept "not resolved", a typo'd or retired name closed its port to discovery for good.
    // A backend admitted meanwhile at an address the name comes to have is let go then
    // (onChange: balancer.ts namedServerResolved).
    const r = resolver({});
    let t = 0;
    const changes: Array<[string, number, string[]]> = [];
    const named = new NamedServers(
      [{ id: 'svc', url: url('http://svc.test:8080') }],
      r.lookup,
      () => t,
      (id, port, addresses) => changes.push([id, port, [...addresses]]),
    );
    named.refresh();
    expect(named.match('10.0.0.5', 8080)?.resolved).toBe(false);
    r.answer();
    expect(named.match('10.0.0.5', 8080)).toBeUndefined();
    // It exists now: the addresses new to it are said, once each, round robin or not.
    for (const answer of [['10.0.0.5', 'fd00::5'], ['10.0.0.6'], ['10.0.0.5'], ['10.0.0.6']]) {
      r.table['svc.test'] = answer;
      t += REFRESH_MS;
      named.refresh();
      r.answer();
    }
    expect(named.match('10.0.0.5', 8080)?.id).toBe('svc');
    expect(named.match('10.0.0.6', 8080)?.id).toBe('svc');
    expect(changes).toEqual([
      ['svc', 8080, ['10.0.0.5', '[fd00::5]']],
      ['svc', 8080, ['10.0.0.6']],
    ]);
  });

  it('takes every loopback address as one server: a server on all addresses answers on each', () => {
    const r = resolver({ localhost: ['127.0.0.1'] });
    const named = new NamedServers(
      [{ id: 'l', url: url('http://localhost:3000') }],
      r.lookup,
      () => 0,
    );
    named.refresh();
    r.answer();
    for (const a of ['127.0.0.1', '127.0.0.2', '::1', '0.0.0.0', '::'])
      expect(named.match(a, 3000)?.id).toBe('l');
    expect(named.match('10.0.0.1', 3000)).toBeUndefined();
  });

  it('has nothing to do when every configured backend is an IP literal', () => {
    const r = resolver({});
    const named = new NamedServers([{ id: 'a', url: url('http://10.0.0.1') }], r.lookup, () => 0);
    expect(named.any).toBe(false);
    named.refresh();
    expect(r.asked).toEqual([]);
    expect(named.match('10.0.0.1', 80)).toBeUndefined();
  });
});
