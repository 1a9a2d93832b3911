/**
 * Whether a port can be listened on now (127.0.0.1): an example that is given a taken
 * port says so in one line before it starts anything, rather than ending in a stack
 * trace once its backends, agents and broker run.
 */
import net from 'node:net';

export function portFree(port: number): Promise<boolean> {
  if (port === 0) return Promise.resolve(true);
  return new Promise((resolve) => {
    const probe = net.createServer();
    probe.once('error', () => resolve(false));
    probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
  });
}
