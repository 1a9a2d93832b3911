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
