/**
 * The clock of one request body while the gateway waits for it: its silence
 * (clientBodyTimeoutMs) and its data rate (clientBodyMinRate), on one timer.
 *
 * Why a rate: a streamed body holds a backend slot from its dispatch
 * (request-flow.ts, pipeTaken), and a body that sends one byte every few
 * seconds is never silent for clientBodyTimeoutMs. The per-client bound caps
 * what one address holds, not what a few do: five addresses sending one
 * byte every 3 s (about 100 B/s in all) held the whole pool of a backend
 * (256 slots) until the server's requestTimeout, and every other client got
 * 503 LW_GW_SATURATED meanwhile. As Kestrel's MinRequestBodyDataRate (240
 * B/s after a 5 s grace), a body whose average rate since the gateway began
 * waiting for it is under the minimum, once the grace is over, is cut.
 *
 * Only the time the gateway reads counts: while it is not reading (a slow
 * backend's backpressure paused the upload, or the body is in) the clock
 * stops, as Kestrel's does. A fast client uploading to a slow reader is never
 * the client's fault.
 *
 * No timer of its own: the rate is checked on each chunk, and on the silence
 * timer, which fires after every CHECK_MS of silence while a rate is set (and
 * counts those periods towards the silence). Checked on chunks alone, one
 * byte every 9.9 s (10 s timeout) would be cut only at the first chunk past
 * the grace; checked on the timer too, a body under the minimum is cut
 * within CHECK_MS of the grace's end (or of falling under it later),
 * whatever the spacing of its bytes.
 */
export interface BodyMinRate {
  bytesPerSec: number;
  graceMs: number;
}

/** The longest the rate goes unchecked while the body is silent: Kestrel's heartbeat (1 s). */
export const CHECK_MS = 1_000;

/** A firing this much past its time (or half its period, if more) decides nothing (fire). */
const LATE_MS = 20;

export class BodyClock {
  private timer: NodeJS.Timeout | undefined;
  /** The timer's period: the silence's, or shorter to check the rate. */
  private readonly periodMs: number;
  /** Silence since the last bytes, as the timer measured it (its periods that fired). */
  private silentMs = 0;
  /** The timer's current duration (the last one may be shorter: what is left of the silence). */
  private armedMs = 0;
  /** When the timer was last armed or refreshed (`now()`). */
  private armedAtMs = 0;
  /** The last firing was late and decided nothing (fire). */
  private deferred = false;
  private bytes = 0;
  /** Reading time before the current reading period. */
  private readMs = 0;
  /** When the current reading period began; -1 while the gateway is not reading. */
  private since = -1;
  /** Expired: what still arrives (a lingering close reads the rest) changes nothing. */
  private over = false;
  /** The backend answered: the minimum rate no longer applies (answered()). */
  private rateOff = false;

  constructor(
    private readonly idleMs: number | undefined,
    private readonly minRate: BodyMinRate | undefined,
    private readonly now: () => number,
    /** The body is too slow or silent: called once, with why; the clock has stopped. */
    private readonly expired: (detail: string) => void,
  ) {
    this.periodMs = Math.min(idleMs ?? Infinity, minRate ? CHECK_MS : Infinity);
  }

  /** Whether it times anything at all (both options off: no clock is needed). */
  static needed(idleMs: number | undefined, minRate: BodyMinRate | undefined): boolean {
    return idleMs !== undefined || minRate !== undefined;
  }

  /** The gateway waits for the client's next bytes (at the start, after a chunk, after a drain). */
  reading(bytes = 0): void {
    if (this.over) return;
    if (this.since < 0) this.since = this.now();
    this.bytes += bytes;
    if (bytes > 0 && this.tooSlow()) return;
    if (this.timer) {
      if (bytes > 0) {
        this.silentMs = 0;
        this.deferred = false;
        this.armedAtMs = this.now();
        this.timer.refresh();
      }
      return;
    }
    this.deferred = false;
    this.silentMs = 0;
    this.arm(this.periodMs);
  }

  /** The gateway stops reading (backpressure, or the body is in): neither silence nor time counts. */
  paused(bytes = 0): void {
    this.bytes += bytes;
    if (this.since >= 0) {
      this.readMs += this.now() - this.since;
      this.since = -1;
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    this.deferred = false;
  }

  /**
   * The backend's response head arrived: from now on only the silence counts. The rate
   * guards a slot held while the backend waits for a body to answer; once it answered, a
   * body still coming is a full-duplex stream (a chat over chunked HTTP/1.1, an upload
   * acknowledged as it goes) whose client talks at its own pace, and at one 20-byte
   * message a second such a stream was cut at 6 s with its answer half sent.
   */
  answered(): void {
    this.rateOff = true;
  }

  private arm(ms: number): void {
    this.armedMs = ms;
    this.armedAtMs = this.now();
    this.timer = setTimeout(this.fire, ms);
  }

  private readonly fire = (): void => {
    this.timer = undefined;
    const lateMs = this.now() - this.armedAtMs - this.armedMs;
    this.silentMs += this.armedMs;
    // Late behind a busy loop (a long GC, a machine short of CPU), a timer runs before the
    // loop reads any socket: bytes the client sent meanwhile are still unread, and with a
    // clientBodyTimeoutMs of one period or less a single firing decided on them (408 to a
    // client that had sent). Nothing is decided on a late firing: the next, a loop turn
    // later, decides, after the socket has been read (and reading() started the clock
    // again if bytes came). Only once in a row: the loop has read the socket since, and a
    // loop kept busy (by the slow client's own neighbours) must not keep the body uncut.
    if (!this.deferred && lateMs > Math.max(LATE_MS, this.armedMs / 2)) {
      this.deferred = true;
      const left = this.idleMs === undefined ? Infinity : this.idleMs - this.silentMs;
      return this.arm(Math.max(1, Math.min(this.periodMs, left)));
    }
    this.deferred = false;
    if (this.idleMs !== undefined && this.silentMs >= this.idleMs) {
      this.stop();
      return this.expired(`no body bytes for ${this.idleMs} ms`);
    }
    if (this.tooSlow()) return;
    const left = this.idleMs === undefined ? Infinity : this.idleMs - this.silentMs;
    this.arm(Math.min(this.periodMs, left));
  };

  /** Past the grace and under the minimum: stops and calls `expired`. */
  private tooSlow(): boolean {
    const min = this.minRate;
    if (!min || this.rateOff) return false;
    const ms = this.readMs + (this.since < 0 ? 0 : this.now() - this.since);
    if (ms < min.graceMs || this.bytes * 1000 >= min.bytesPerSec * ms) return false;
    this.stop();
    const rate = (this.bytes * 1000) / ms;
    this.expired(
      `${this.bytes} body bytes in ${Math.round(ms)} ms (${rate.toFixed(1)} B/s), ` +
        `under clientBodyMinRate ${min.bytesPerSec} B/s`,
    );
    return true;
  }

  private stop(): void {
    this.paused();
    this.over = true;
  }
}
