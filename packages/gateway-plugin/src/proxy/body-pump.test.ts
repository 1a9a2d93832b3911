import { PassThrough, Writable } from 'node:stream';
import { pumpBody, type PumpEvents } from './body-pump';

function recorder(): PumpEvents & { log: string[] } {
  const log: string[] = [];
  return {
    log,
    waitingForClient: () => log.push('client'),
    waitingForBackend: () => log.push('backend'),
    ended: () => log.push('ended'),
    threw: (err) => log.push(`threw ${err.message}`),
  };
}

function sink(highWaterMark = 16_384): Writable & { got: Buffer[] } {
  const got: Buffer[] = [];
  const w = new Writable({
    highWaterMark,
    write(chunk: Buffer, _enc, cb) {
      got.push(chunk);
      cb();
    },
  });
  return Object.assign(w, { got });
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('pumpBody', () => {
  it('copies the body and says whom it waits for', async () => {
    const src = new PassThrough();
    const dest = sink();
    const ev = recorder();
    pumpBody(src, dest, ev);
    src.write('ab');
    src.end('c');
    await tick();
    expect(Buffer.concat(dest.got).toString()).toBe('abc');
    expect(ev.log).toEqual(['client', 'client', 'client', 'ended']);
    expect(dest.writableEnded).toBe(true);
  });

  it('writes the prefix read before dispatch first, then the rest in order', async () => {
    const src = new PassThrough();
    src.write('cd');
    src.pause(); // as readBody leaves it after the prefix
    const dest = sink();
    const ev = recorder();
    pumpBody(src, dest, ev, Buffer.from('ab'));
    src.end('e');
    await tick();
    expect(Buffer.concat(dest.got).toString()).toBe('abcde');
    expect(dest.writableEnded).toBe(true);
    expect(ev.log.at(-1)).toBe('ended');
  });

  it('keeps the rest paused while the backend has not taken the prefix', async () => {
    const src = new PassThrough();
    src.pause();
    let release: () => void = () => {};
    const got: string[] = [];
    const dest = new Writable({
      highWaterMark: 1,
      write(c: Buffer, _e, cb) {
        got.push(c.toString());
        release = cb;
      },
    });
    const ev = recorder();
    pumpBody(src, dest, ev, Buffer.from('prefix'));
    src.write('rest');
    await tick();
    expect([ev.log, src.isPaused(), got]).toEqual([['backend'], true, ['prefix']]);
    release();
    await tick();
    expect(got).toEqual(['prefix', 'rest']);
  });

  it('ends with the prefix alone when nothing more is coming', async () => {
    const src = new PassThrough();
    src.end();
    src.resume();
    await tick();
    const dest = sink();
    const ev = recorder();
    pumpBody(src, dest, ev, Buffer.from('all'));
    await tick();
    expect([Buffer.concat(dest.got).toString(), dest.writableEnded, ev.log]).toEqual([
      'all',
      true,
      ['ended'],
    ]);
  });

  it('waits for the backend under backpressure, then for the client again', async () => {
    const src = new PassThrough();
    let release: () => void = () => {};
    const dest = new Writable({
      highWaterMark: 1,
      write(_c, _e, cb) {
        release = cb;
      },
    });
    const ev = recorder();
    pumpBody(src, dest, ev);
    src.write('xx');
    await tick();
    expect(ev.log).toEqual(['client', 'backend']);
    expect(src.isPaused()).toBe(true);
    release();
    await tick();
    expect(ev.log).toEqual(['client', 'backend', 'client']);
    expect(src.isPaused()).toBe(false);
  });

  it('says how many bytes came with each wait, for the minimum rate (body-clock.ts)', async () => {
    const src = new PassThrough();
    let release: () => void = () => {};
    const dest = new Writable({
      highWaterMark: 3,
      write(_c, _e, cb) {
        release = cb;
      },
    });
    const bytes: string[] = [];
    pumpBody(src, dest, {
      waitingForClient: (n) => bytes.push(`client ${n}`),
      waitingForBackend: (n) => bytes.push(`backend ${n}`),
      ended: () => bytes.push('ended'),
      threw: () => {},
    });
    src.write('a');
    await tick();
    release();
    src.write('bcde');
    await tick();
    release();
    await tick();
    expect(bytes).toEqual(['client 0', 'client 1', 'backend 4', 'client 0']);
  });

  it('reports a throwing write instead of letting it escape, and stops', async () => {
    const src = new PassThrough();
    const dest = sink();
    dest.write = () => {
      throw Object.assign(new Error('Trailers are invalid'), { code: 'ERR_HTTP_TRAILER_INVALID' });
    };
    const ev = recorder();
    pumpBody(src, dest, ev);
    src.write('a');
    src.write('b');
    await tick();
    expect(ev.log).toEqual(['client', 'threw Trailers are invalid']);
    expect(src.listenerCount('data')).toBe(0);
  });

  it('reports a throwing end (the head of a bodyless request is written there)', async () => {
    const src = new PassThrough();
    const dest = sink();
    dest.end = () => {
      throw new Error('head refused');
    };
    const ev = recorder();
    pumpBody(src, dest, ev);
    src.end();
    await tick();
    expect(ev.log).toEqual(['client', 'threw head refused']);
  });

  it('ends the destination a tick later when the source already ended', async () => {
    const src = new PassThrough();
    src.end();
    src.resume();
    await tick();
    expect(src.readableEnded).toBe(true);
    const dest = sink();
    const ev = recorder();
    pumpBody(src, dest, ev);
    expect(dest.writableEnded).toBe(false);
    await tick();
    expect(ev.log).toEqual(['ended']);
    expect(dest.writableEnded).toBe(true);
  });

  it('stops when the destination closes', async () => {
    const src = new PassThrough();
    const dest = sink();
    const ev = recorder();
    pumpBody(src, dest, ev);
    dest.destroy();
    await tick();
    expect(src.listenerCount('data')).toBe(0);
    src.end('late');
    await tick();
    expect(ev.log).toEqual(['client']);
  });

  it('leaves no source paused when the destination it paused for closes', async () => {
    const src = new PassThrough();
    // A backend request that takes nothing more (backpressure), then is gone.
    const dest = new Writable({ highWaterMark: 1, write: () => undefined });
    pumpBody(src, dest, recorder());
    src.write('a');
    await tick();
    expect(src.isPaused()).toBe(true);
    dest.destroy();
    await tick();
    // Before: still paused, with no listener left to resume it, so the lingering close
    // that was to read and drop the rest of the upload read nothing (linger.ts).
    expect(src.listenerCount('data')).toBe(0);
    expect(src.isPaused()).toBe(false);
  });

  it('ends the destination a tick later, reading nothing, when the parser has the whole bodiless message', async () => {
    // An IncomingMessage of a GET: complete, nothing buffered, 'end' not read yet.
    const src = Object.assign(new PassThrough(), { complete: true });
    const dest = sink();
    const ev = recorder();
    pumpBody(src, dest, ev);
    expect(dest.writableEnded).toBe(false);
    expect(src.listenerCount('data')).toBe(0);
    await tick();
    expect(ev.log).toEqual(['ended']);
    expect(dest.writableEnded).toBe(true);
  });

  it('streams a complete message whose body is still buffered', async () => {
    const src = Object.assign(new PassThrough(), { complete: true });
    src.end('body');
    const dest = sink();
    const ev = recorder();
    pumpBody(src, dest, ev);
    await tick();
    expect(Buffer.concat(dest.got).toString()).toBe('body');
    expect(ev.log.at(-1)).toBe('ended');
  });
});
