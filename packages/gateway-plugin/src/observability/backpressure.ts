import type { ServerResponse } from 'node:http';

/**
 * What an answer written in parts waits on (the metrics scrape, the status body): the
 * socket's 'drain', the client's going, or a caller's own wake-up (a body still being
 * made). One 'drain' and one 'close' listener for the whole answer: a compression
 * middleware's res.on sends 'drain' listeners to its zlib stream and its res.off does not
 * follow them there, so one added and taken back per wait stayed there, each (a
 * MaxListenersExceededWarning on a 5 MB scrape).
 */
export class AnswerWaiter {
  /** The client went (the response closed), before or since. */
  closed: boolean;
  private wake: (() => void) | undefined;

  constructor(private readonly res: ServerResponse) {
    this.closed = res.destroyed;
    res.once('close', this.onClose);
    res.on('drain', this.woken);
  }

  /** Ends the current wait, if any. */
  readonly woken = (): void => {
    const resolve = this.wake;
    this.wake = undefined;
    resolve?.();
  };

  /** Resolves at the next 'drain', the close or woken(); at once once closed. */
  next(): Promise<void> {
    return new Promise((resolve) => {
      if (this.closed) return resolve();
      this.wake = resolve;
    });
  }

  /** Takes both listeners back. */
  dispose(): void {
    this.res.off('drain', this.woken);
    this.res.off('close', this.onClose);
  }

  private readonly onClose = (): void => {
    this.closed = true;
    this.woken();
  };
}
