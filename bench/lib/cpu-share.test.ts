import { capacityFigures, remainingCapacityShares } from './cpu-share';

const fleet = [
  { id: 'b1', quotaCores: 0.3 },
  { id: 'b2', quotaCores: 0.3 },
  { id: 'b3', quotaCores: 0.3 },
];

describe('remaining capacity shares', () => {
  it('takes the neighbour off its own backend only', () => {
    const s = remainingCapacityShares(fleet, { backendId: 'b1', cores: 0.15 });
    expect(s.b1).toBeCloseTo(0.15 / 0.75, 9);
    expect(s.b2).toBeCloseTo(0.3 / 0.75, 9);
    expect(s.b1! + s.b2! + s.b3!).toBeCloseTo(1, 9);
  });

  it('is even without a neighbour, and never negative', () => {
    expect(remainingCapacityShares(fleet).b3).toBeCloseTo(1 / 3, 9);
    expect(remainingCapacityShares(fleet, { backendId: 'b2', cores: 0.4 }).b2).toBe(0);
  });
});

describe('capacityFigures', () => {
  it('gives the starved backend its share against both capacity figures', () => {
    const x = capacityFigures({
      backends: fleet.map((b) => ({ ...b, processCores: 0.2 })),
      groupCores: { b1: 0.3, b2: 0.2, b3: 0.2 },
      neighbour: { backendId: 'b1', cores: 0.25, contendedCores: 0.15 },
      shares: { b1: 0.1, b2: 0.45, b3: 0.45 },
    });
    expect(x.b1GroupCores).toBe(0.3);
    expect(x.neighbourCores).toBe(0.25);
    expect(x.b1CapacityShare).toBeCloseTo(0.05 / 0.65, 3);
    expect(x.b1ShareVsCapacity).toBeCloseTo(0.1 / (0.05 / 0.65), 2);
    expect(x.b1BusyCapacityShare).toBe(0.2);
    expect(x.b1ShareVsBusyCapacity).toBe(0.5);
  });

  it('has no neighbour figures without a neighbour', () => {
    const x = capacityFigures({
      backends: fleet.map((b) => ({ ...b, processCores: 0.2 })),
      groupCores: {},
      shares: { b1: 1 / 3, b2: 1 / 3, b3: 1 / 3 },
    });
    expect(Object.keys(x).sort()).toEqual(['b1Cores', 'b2Cores', 'b3Cores']);
  });
});
