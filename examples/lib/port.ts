/**
 * A port an example is given: a taken one is said in one line, before anything starts
 * where the example can check first, rather than in a stack trace once its backends,
 * agents and broker run.
 */
import type http from 'node:http';
import net from 'node:net';

/** The line for a taken port; `flag` is how this program is given another one. */
function portTakenLine(program: string, port: number, flag: string): string {
  return `${program}: port ${port} is already in use. Pick another: ${flag} 9090 (or --port 0 for any free port)\n`;
}

/** Whether `port` can be listened on now (127.0.0.1). */
function portFree(port: number): Promise<boolean> {
  if (port === 0) return Promise.resolve(true);
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}

/** Exits 1 with the one line when `port` is taken now. */
export async function exitIfPortTaken(
  program: string,
  port: number,
  flag = '--port',
): Promise<void> {
  if (await portFree(port)) return;
  process.stderr.write(portTakenLine(program, port, flag));
  process.exit(1);
}

/** Listens on 127.0.0.1:`port`, or says in one line why it cannot: false then. */
export function listenOrSay(
  program: string,
  server: http.Server,
  port: number,
  flag = '--port',
): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      process.stderr.write(
        err.code === 'EADDRINUSE'
          ? portTakenLine(program, port, flag)
          : `${program}: cannot listen on port ${port}: ${err.message}\n`,
      );
      resolve(false);
    });
    server.listen(port, '127.0.0.1', () => resolve(true));
  });
}
