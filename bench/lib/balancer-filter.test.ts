import { balancerWords, keepsBalancer } from './balancer-filter';

describe('--balancers', () => {
  const rows = ['nginx least_conn', 'haproxy leastconn', 'loadwise load-aware (backlog 511)'];
  const kept = (arg: string | undefined) =>
    rows.filter((name) => keepsBalancer(balancerWords(arg), name));

  it('keeps the rows whose name contains one of the words, in any case', () => {
    expect(kept('nginx least_conn,HAProxy leastconn')).toEqual(rows.slice(0, 2));
    expect(kept('(Backlog 511)')).toEqual([rows[2]]);
  });

  it('keeps every row without words, and ignores blank ones', () => {
    expect(kept(undefined)).toEqual(rows);
    expect(kept('')).toEqual(rows);
    expect(kept(' nginx , ,')).toEqual([rows[0]]);
  });
});
