/**
 * The LOADWISE_* environment variables of loadwise's programs on the gateway side. Not
 * part of the wire contract: it lives here, as did-you-mean.ts does, because both
 * packages depend on this one and on nothing else of each other. One environment may
 * serve several programs (a host's, a container's, an env file shared by the agent and a
 * gateway): loadwise-agent warns about a LOADWISE_ variable it does not read, and none
 * of these is one to warn about. The agent's own are its CLI's table
 * (health-agent/src/config.ts: `LOADWISE_<FLAG>`).
 */

/** What every loadwise variable begins with. */
export const ENV_PREFIX = 'LOADWISE_';

/** `loadwise status` (gateway-plugin's CLI): the variables its flags fall back to. */
export const STATUS_ENV = {
  url: 'LOADWISE_STATUS_URL',
  token: 'LOADWISE_STATUS_TOKEN',
  tokenHeader: 'LOADWISE_STATUS_TOKEN_HEADER',
  header: 'LOADWISE_STATUS_HEADER',
} as const;

/** runWorkers (gateway-plugin) sets these in the environment of every worker it starts. */
export const WORKER_ENV = {
  index: 'LOADWISE_WORKER_INDEX',
  restarts: 'LOADWISE_WORKER_RESTARTS',
  failedStarts: 'LOADWISE_WORKER_FAILED_STARTS',
} as const;

/**
 * The standalone gateway's (examples/gateway-server.ts): every variable under it is that
 * program's, which refuses at start one it does not know.
 */
export const GATEWAY_ENV_PREFIX = 'LOADWISE_GW_';

/** The variables of the gateway side named one by one (STATUS_ENV, WORKER_ENV). */
export const GATEWAY_SIDE_ENV: readonly string[] = [
  ...Object.values(STATUS_ENV),
  ...Object.values(WORKER_ENV),
];

/** `name` is a variable of a program on the gateway side (not one for the agent to warn about). */
export function isGatewaySideVariable(name: string): boolean {
  return name.startsWith(GATEWAY_ENV_PREFIX) || GATEWAY_SIDE_ENV.includes(name);
}
