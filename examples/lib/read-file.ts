/**
 * A file an example program reads once at start (a key file, a password file,
 * TLS material): a regular file of at most `maxBytes`, opened without blocking,
 * as the health agent reads its own (readRegularFileSync in
 * packages/health-agent/src/samplers/bounded-read.ts, not exported). A bare
 * readFileSync took whatever the path was: in gateway-server a named pipe hung
 * the start with no output, and /dev/zero grew the process until it crashed.
 */
import { closeSync, constants, fstatSync, openSync, readSync } from 'node:fs';

/** Key, password and TLS files are far below this; a larger one is not one of them (the agent's bound). */
export const MAX_START_FILE_BYTES = 1024 * 1024;

/** The bytes, or why not: an errno of open/read, 'not a regular file' or 'larger than N bytes'. */
export function readStartFile(
  path: string,
  maxBytes = MAX_START_FILE_BYTES,
): { bytes: Buffer } | { error: string } {
  let fd: number;
  try {
    // O_NONBLOCK: a named pipe opens at once (and is then refused) instead of waiting for a writer.
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch (err) {
    return { error: (err as NodeJS.ErrnoException).code ?? String(err) };
  }
  try {
    if (!fstatSync(fd).isFile()) return { error: 'not a regular file' };
    // One byte past the bound tells a longer file from one of exactly the bound.
    const buf = Buffer.alloc(maxBytes + 1);
    let length = 0;
    for (;;) {
      const n = readSync(fd, buf, length, buf.length - length, null);
      if (n === 0) break;
      length += n;
      if (length > maxBytes) {
        const mib = maxBytes / (1024 * 1024);
        return {
          error: `larger than ${Number.isInteger(mib) ? `${mib} MiB` : `${maxBytes} bytes`}`,
        };
      }
    }
    return { bytes: Buffer.from(buf.subarray(0, length)) };
  } catch (err) {
    return { error: (err as NodeJS.ErrnoException).code ?? String(err) };
  } finally {
    closeSync(fd);
  }
}
