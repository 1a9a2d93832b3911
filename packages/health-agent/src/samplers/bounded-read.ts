import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';

/**
 * The first buffer of a read; a longer file doubles it, up to the bound. The files read
 * every sample (cgroup files, a PID file) are a few hundred bytes to a few KiB. A buffer
 * of the whole bound (64 KiB + 1 for a cgroup file), zero-filled by Buffer.alloc, put
 * ~380 KiB of touched malloc memory a second into the default agent, resident until a GC
 * freed the buffers and after: 5-12 MB more RSS max than the 2026-12-01 agent in the
 * same bench:agent runs (2026-12-06), whose readFile() never touched most of its 64 KiB
 * chunks (bench/results/agent-rss-2026-12-06.md).
 */
export const FIRST_READ_BYTES = 4096;

/** One read the loop asks for: into `buf` at `offset`, as many bytes as fit. */
interface ReadRequest {
  buf: Buffer<ArrayBuffer>;
  offset: number;
}

/**
 * The read loop of both readers, written once: it asks for reads (yielding a request, and
 * resumed with the byte count) until EOF, growing the buffer from FIRST_READ_BYTES by
 * doubling up to one byte past `maxBytes` (one byte more than allowed tells a longer file
 * from one of exactly the limit). Returns the bytes, or 'too large'.
 */
function* readLoop(maxBytes: number): Generator<ReadRequest, Buffer | 'too large', number> {
  let buf = Buffer.alloc(Math.min(maxBytes + 1, FIRST_READ_BYTES));
  let length = 0;
  for (;;) {
    if (length === buf.length) {
      if (length > maxBytes) return 'too large';
      const next = Buffer.alloc(Math.min(buf.length * 2, maxBytes + 1));
      buf.copy(next);
      buf = next;
    }
    const bytesRead = yield { buf, offset: length };
    if (bytesRead === 0) return buf.subarray(0, length);
    length += bytesRead;
  }
}

/** An errno of open/read, or the error's text. */
function errorOf(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}

/** Why readRegularFile read nothing: an errno of open/read, or the two checks. */
export type BoundedReadError = 'not a regular file' | 'too large' | string;

/**
 * The text of a file the agent reads on every sample (a PID file, a cgroup
 * file), never a hang and never more than `maxBytes`: opened without
 * blocking (O_NONBLOCK: a named pipe put in its place returns at once), a
 * regular file only, read until EOF (procfs and cgroupfs files say size 0)
 * up to one byte past the bound. readFile() took whatever the path was: a
 * FIFO blocked a libuv thread for good (no report again, and SIGTERM logged
 * 'stopped' but the process never exited), and a 256 MiB file cost seconds
 * of CPU and a GB of memory a sample.
 */
export async function readRegularFile(
  path: string,
  maxBytes: number,
): Promise<{ text: string } | { error: BoundedReadError }> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    return { error: errorOf(err) };
  }
  try {
    if (!(await handle.stat()).isFile()) return { error: 'not a regular file' };
    const loop = readLoop(maxBytes);
    let step = loop.next();
    while (!step.done) {
      const { buf, offset } = step.value;
      step = loop.next((await handle.read(buf, offset, buf.length - offset, null)).bytesRead);
    }
    return step.value === 'too large'
      ? { error: 'too large' }
      : { text: step.value.toString('utf8') };
  } catch (err) {
    return { error: errorOf(err) };
  } finally {
    await handle.close().catch(() => undefined);
  }
}

/**
 * readRegularFile's checks, synchronously: for the files read once at start (a key file,
 * a password file, TLS material), where the options are resolved without awaiting.
 * readFileSync took whatever the path was: a named pipe hung the agent at start with no
 * output, and /dev/zero grew it to 1.9 GB in 3 s.
 */
export function readRegularFileSync(
  path: string,
  maxBytes: number,
): { bytes: Buffer } | { error: BoundedReadError } {
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    return { error: errorOf(err) };
  }
  try {
    if (!fstatSync(fd).isFile()) return { error: 'not a regular file' };
    const loop = readLoop(maxBytes);
    let step = loop.next();
    while (!step.done) {
      const { buf, offset } = step.value;
      step = loop.next(readSync(fd, buf, offset, buf.length - offset, null));
    }
    return step.value === 'too large' ? { error: 'too large' } : { bytes: step.value };
  } catch (err) {
    return { error: errorOf(err) };
  } finally {
    closeSync(fd);
  }
}
