/**
 * Preloaded into a child process (`node --require .../exit-with-parent.js
 * script ...`, see exitWithParentArgs in processes.ts) so that it stops when
 * its parent dies, even by SIGKILL, which runs no cleanup of the parent's:
 * the example backend's `--exit-with-parent`, for a program that has no such
 * flag (the health agent: a product, whose flags are not the quick start's to
 * add). The parent holds the write end of our stdin pipe (ManagedChild spawns
 * every child with one); when it closes, the child is sent SIGTERM, its own
 * graceful stop (an agent publishes draining, then offline, and exits). A
 * `kill -KILL` of the quick start used to leave its three agents running,
 * publishing reports of backends that were gone.
 *
 * Only for a child whose stdin is such a pipe: on /dev/null it would stop at once.
 */
const parentGone = (): void => {
  process.kill(process.pid, 'SIGTERM');
};
process.stdin.once('end', parentGone);
process.stdin.once('error', parentGone);
process.stdin.resume();
// Watching keeps nothing running: the child still exits when its own work is done.
(process.stdin as { unref?: () => void }).unref?.();

export {};
