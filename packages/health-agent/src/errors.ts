/**
 * Error catalogue of @loadwise/health-agent. Codes are stable and listed in
 * docs/agent.md (a test checks that the two agree). Only constructors, config
 * parsing and explicit API misuse throw; sampling and publishing failures are
 * reported as events and in the health verdict, never thrown at the caller.
 */
export const AGENT_ERRORS = {
  LW_AGENT_INVALID_OPTION:
    'an option (flag, env var, config file key or library option) is invalid',
  LW_AGENT_CONFIG_FILE:
    'the config file cannot be read, is not a JSON object or has an unknown key',
  LW_AGENT_KEY_FILE: 'the signing key file or a TLS file cannot be read or parsed',
  LW_AGENT_PID_FILE: 'a PID file cannot be read or does not hold a process id',
  LW_AGENT_NOT_STARTED: 'the agent was used before start() or after stop()',
  LW_AGENT_SIGNAL: 'a control signal could not be delivered to the agent process',
} as const;

export type AgentErrorCode = keyof typeof AGENT_ERRORS;

export class AgentError extends Error {
  readonly code: AgentErrorCode;
  /**
   * For LW_AGENT_INVALID_OPTION: the option at fault, in the caller's
   * vocabulary: a library path such as `queue.port` from createAgent(), a
   * flag such as `--kernel-port` from the CLI.
   */
  readonly option?: string;
  constructor(code: AgentErrorCode, detail: string, option?: string) {
    super(`${code}: ${detail}`);
    this.name = 'AgentError';
    this.code = code;
    if (option !== undefined) this.option = option;
  }
}

export function invalidOption(option: string, detail: string): AgentError {
  return new AgentError('LW_AGENT_INVALID_OPTION', `${option}: ${detail}`, option);
}

/**
 * `unknown option queue.prot (did you mean queue.port?)`, the gateway's
 * wording: `prefix` is the path of the object (`queue.`) or `--` for a flag.
 */
export function unknownOptionText(name: string, known: readonly string[], prefix = ''): string {
  const near = didYouMean(name, known);
  return `unknown option ${prefix}${name}${near ? ` (did you mean ${prefix}${near}?)` : ''}`;
}

/** Levenshtein distance, case-insensitive; small strings only (option names). */
function distance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0]!;
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const up = prev[j]!;
      const cost = a[i - 1]!.toLowerCase() === b[j - 1]!.toLowerCase() ? 0 : 1;
      prev[j] = Math.min(up + 1, prev[j - 1]! + 1, diag + cost);
      diag = up;
    }
  }
  return prev[b.length]!;
}

/** The known name nearest to `name`, if it is close enough to be a typo (a third of it may differ, 1 to 3 edits). */
export function didYouMean(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = distance(name, k);
    if (d < bestD) [best, bestD] = [k, d];
  }
  return bestD <= Math.min(3, Math.max(1, Math.ceil(name.length / 3))) ? best : undefined;
}
