/**
 * An example whose stdout's reader went away (`npm start | head -3`): the next
 * line was an uncaught `write EPIPE`, exit 1 with a stack, and no cleanup ran.
 * As the packages' command lines do (the `loadwise` CLI's run(), the health
 * agent's and runWorkers' keepRunningWithoutOutput, none of them exported):
 * an 'error' on stdout or stderr is taken, the stream is left destroyed and
 * later writes to it are dropped. Then `lost` is called, once, for a lost
 * stdout: a program whose output is its point stops there, as `head` wanted.
 */
export function onLostOutput(lost: () => void): void {
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  process.stdout.once('error', lost);
}
