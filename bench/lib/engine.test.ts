import { rotated } from './engine';

describe('rotated: the order a run measures its balancers in', () => {
  it('turns the list by one place per run, so each balancer runs first in turn', () => {
    const list = ['nginx', 'haproxy', 'loadwise', 'hpm'];
    expect(rotated(list, 0)).toEqual(['nginx', 'haproxy', 'loadwise', 'hpm']);
    expect(rotated(list, 1)).toEqual(['haproxy', 'loadwise', 'hpm', 'nginx']);
    expect(rotated(list, 3)).toEqual(['hpm', 'nginx', 'haproxy', 'loadwise']);
    expect(rotated(list, 4)).toEqual(list);
    const firsts = [0, 1, 2, 3].map((k) => rotated(list, k)[0]);
    expect(new Set(firsts).size).toBe(list.length);
  });

  it('leaves the list itself alone and handles an empty one', () => {
    const list = ['a', 'b'];
    rotated(list, 1);
    expect(list).toEqual(['a', 'b']);
    expect(rotated([], 3)).toEqual([]);
  });
});
