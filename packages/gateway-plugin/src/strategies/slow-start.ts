/**
 * Slow start as a share of the traffic, not a handicap in the comparison.
 *
 * `load-aware` and `peak-ewma` divide their metric by the slow-start factor f
 * (0.1 → 1 over the ramp). P2C compares two metrics, so a division is a
 * threshold, not a share: at light load a peer's wait is about one service
 * time, the newcomer's is ten, and the newcomer loses every comparison until
 * f has nearly reached 1. Measured: a backend restarted under load got no
 * request for the first 10 s of a 15 s ramp, then all of its share at once
 * (test/chaos/restart-fair-share.test.ts). Envoy's slow start scales a host's
 * *weight*, which with weighted picking is a share proportional to f.
 *
 * The same here: each time a ramping backend is sampled, it competes on its
 * undivided metric with probability f, and on the divided one (the old
 * handicap, which keeps several ramping backends ordered among themselves)
 * otherwise. Its traffic then starts at about f × what an idle backend gets
 * and grows with f, and the estimate (in-flight, latency) takes over as soon
 * as it carries load: it reaches its fair share within the ramp, never
 * after it. A settled backend (f = 1) costs no random draw.
 */
import type { Metric } from './p2c-select';

export function withSlowStartShare(metric: Metric, random: () => number): Metric {
  return (ep, nowMs) => {
    const m = metric(ep, nowMs);
    const f = ep.load.slowStartFactor(nowMs);
    // `f < 1` is false for NaN: a broken factor falls back to the plain metric.
    return f < 1 && f > 0 && random() < f ? m * f : m;
  };
}
