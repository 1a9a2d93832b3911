/**
 * The gateway's clock for everything it times itself: token buckets,
 * ejections, decaying penalties and EWMAs, slow start, the discovery lease,
 * the retry budget, rate-limited logs. Monotonic, on the epoch's scale (the
 * wall clock when the process started, plus the time since), so a step of
 * the wall clock (NTP stepping a clock that was an hour off, a VM resumed)
 * moves none of them. On Date.now, a step back of an hour froze every
 * decay, ejection and bucket refill for that hour (all agent reports dropped
 * as rate-limited after one burst, a recovered backend given nothing), and a
 * step forward of 11 minutes forgot every discovered backend at once.
 *
 * Only what is compared with another host's clock reads the wall clock: a
 * report's timestamps and epoch (the decoder's skew and replay checks), and
 * the time a snapshot says it was taken.
 */
export function monotonicNow(): number {
  return performance.timeOrigin + performance.now();
}
