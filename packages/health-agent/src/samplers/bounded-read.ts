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

/** A buffer twice as long (at most the bound plus one byte), holding what `buf` holds. */
function grown(buf: Buffer<ArrayBuffer>, maxBytes: number): Buffer<ArrayBuffer> {
  const next = Buffer.alloc(Math.min(buf.length * 2, maxBytes + 1));
  buf.copy(next);
  return next;
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
    return { error: (err as NodeJS.ErrnoException).code ?? String(err) };
  }
  try {
    if (!(await handle.stat()).isFile()) return { error: 'not a regular file' };
    let buf = Buffer.alloc(Math.min(maxBytes + 1, FIRST_READ_BYTES));
    let length = 0;
    for (;;) {
      if (length === buf.length) {
        // One byte more than allowed tells a longer file from one of exactly the limit.
        if (length > maxBytes) return { error: 'too large' };
        buf = grown(buf, maxBytes);
      }
      const { bytesRead } = await handle.read(buf, length, buf.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    return { text: buf.toString('utf8', 0, length) };
  } catch (err) {
    return { error: (err as NodeJS.ErrnoException).code ?? String(err) };
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
    return { error: (err as NodeJS.ErrnoException).code ?? String(err) };
  }
  try {
    if (!fstatSync(fd).isFile()) return { error: 'not a regular file' };
    let buf = Buffer.alloc(Math.min(maxBytes + 1, FIRST_READ_BYTES));
    let length = 0;
    for (;;) {
      if (length === buf.length) {
        if (length > maxBytes) return { error: 'too large' };
        buf = grown(buf, maxBytes);
      }
      const bytesRead = readSync(fd, buf, length, buf.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    return { bytes: buf.subarray(0, length) };
  } catch (err) {
    return { error: (err as NodeJS.ErrnoException).code ?? String(err) };
  } finally {
    closeSync(fd);
  }
}
