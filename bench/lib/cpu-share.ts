/**
 * Figures of the CPU-bound scenario's runs (docs/bench.md "CPU-bound"):
 * the CPU each backend used, and with a noisy neighbour in one backend's
 * cgroup, that backend's share of requests against the share of the fleet's
 * capacity it has left, measured rather than assumed:
 *
 *   remaining capacity share of b = (quota_b − neighbour_b) / Σ_i (quota_i − neighbour_i)
 *
 * where neighbour_i is the neighbour's measured CPU rate in backend i's group
 * over the measured window (0 where there is none).
 *
 * That window figure cannot judge the routing: the neighbour never sleeps, so
 * the group always uses its whole quota and quota − neighbour is the
 * backend's own CPU use, whatever share it was sent. With a share s of R req/s
 * at c CPU-seconds each and the others' quota Q, share / remaining share is
 * about s + Q / (c·R): at 245 req/s, 2.15 ms and Q = 0.6 core, 1.14 + s, so
 * ±30% holds for s up to about 0.16, down to a backend sent nothing at all
 * (then both shares are near 0 and the ratio is noise). Hence the second
 * figure, from the neighbour's
 * CPU while the backend was kept busy (lib/neighbour.ts calibration): the
 * capacity it has when it has work, which does not depend on the routing.
 */

export interface CapacityInput {
  backends: Array<{
    id: string;
    /** The group's CPU quota, cores. */
    quotaCores: number;
    /** The backend process's CPU over the measured window, cores. */
    processCores: number;
  }>;
  /** Each group's CPU usage over the window (backend + neighbour), cores, by backend id. */
  groupCores: Record<string, number>;
  /**
   * The neighbour's CPU over the window, cores, whose group it shares, and
   * what it took while that backend was kept busy (lib/neighbour.ts calibration).
   */
  neighbour?: { backendId: string; cores: number; contendedCores: number };
  /** Share of OK responses per backend (the load generator's). */
  shares: Record<string, number>;
}

/** Share of the fleet's capacity each backend has left once the neighbour took its part. */
export function remainingCapacityShares(
  backends: Array<{ id: string; quotaCores: number }>,
  neighbour?: { backendId: string; cores: number },
): Record<string, number> {
  const left = backends.map((b) =>
    Math.max(0, b.quotaCores - (neighbour?.backendId === b.id ? neighbour.cores : 0)),
  );
  const total = left.reduce((a, b) => a + b, 0);
  return Object.fromEntries(backends.map((b, i) => [b.id, total > 0 ? left[i]! / total : NaN]));
}

const r3 = (x: number): number => Math.round(x * 1000) / 1000;

/** The run's extra figures (RunRecord.extra): per-backend CPU, and the starved backend's ratio. */
export function capacityFigures(input: CapacityInput): Record<string, number> {
  const out: Record<string, number> = {};
  for (const b of input.backends) out[`${b.id}Cores`] = r3(b.processCores);
  for (const [id, cores] of Object.entries(input.groupCores)) out[`${id}GroupCores`] = r3(cores);
  const n = input.neighbour;
  if (n) {
    out.neighbourCores = r3(n.cores);
    const capShare = remainingCapacityShares(input.backends, n)[n.backendId]!;
    out[`${n.backendId}CapacityShare`] = r3(capShare);
    out[`${n.backendId}ShareVsCapacity`] = r3((input.shares[n.backendId] ?? 0) / capShare);
    const contended = { backendId: n.backendId, cores: n.contendedCores };
    const busyShare = remainingCapacityShares(input.backends, contended)[n.backendId]!;
    out.neighbourContendedCores = r3(n.contendedCores);
    out[`${n.backendId}BusyCapacityShare`] = r3(busyShare);
    out[`${n.backendId}ShareVsBusyCapacity`] = r3((input.shares[n.backendId] ?? 0) / busyShare);
  }
  return out;
}
