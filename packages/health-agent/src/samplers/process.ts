import { readFile } from 'node:fs/promises';
import type { ProcessMetrics } from '@loadwise/protocol';
import { AgentError } from '../errors';
import { readRegularFile } from './bounded-read';

/**
 * Per-process CPU and RSS from /proc/<pid>/stat and /proc/<pid>/status
 * (proc(5)). systeminformation's processLoad() spawns `ps` on every call and
 * doubles the agent's cost (docs/architecture.md, rule 6); two small file reads do not.
 */
export const DEFAULT_CLOCK_TICKS_PER_S = 100; // sysconf(_SC_CLK_TCK) is 100 on every mainstream Linux ABI

export interface ProcessSamplerOptions {
  pid?: number;
  pidFile?: string;
  procRoot: string;
  clockTicksPerS?: number;
  now?: () => number;
}

/**
 * The state letter (R, S, D, Z, ...) and utime + stime in clock ticks. comm (field 2)
 * may hold spaces and parentheses: split after the last ')'.
 */
export function parseProcPidStat(text: string): { state: string; ticks: number } | undefined {
  const close = text.lastIndexOf(')');
  if (close < 0) return undefined;
  const f = text.slice(close + 2).split(' ');
  // f[0] is field 3 (state); utime is field 14, stime field 15.
  const state = f[0] ?? '';
  const utime = Number(f[11]);
  const stime = Number(f[12]);
  return /^[A-Za-z]$/.test(state) && Number.isFinite(utime) && Number.isFinite(stime)
    ? { state, ticks: utime + stime }
    : undefined;
}

/**
 * States of a process that has exited: Z (a zombie, not yet reaped by its parent) and X
 * (dead). Its /proc entry stays until it is reaped, with no VmRSS; it serves nothing.
 */
const EXITED_STATES = new Set(['Z', 'X']);

export function parseVmRssBytes(text: string): number | undefined {
  const m = /^VmRSS:\s+(\d+)\s*kB/m.exec(text);
  return m ? Number(m[1]) * 1024 : undefined;
}

/**
 * The most a PID file is read of: a PID is at most 20 digits (2^64), and a
 * longer file is no PID file.
 */
export const MAX_PID_FILE_BYTES = 64;

/**
 * The process id `text` holds: decimal digits (at most 20, the 2^64 of MAX_PID_FILE_BYTES)
 * with whitespace around, a safe integer from 1; else undefined. Number() read ` 1e0 `
 * as 1 (init) and `0x35a6` as 13734.
 */
export function parsePid(text: string): number | undefined {
  const t = text.trim();
  if (!/^\d{1,20}$/.test(t)) return undefined;
  const pid = Number(t);
  return Number.isSafeInteger(pid) && pid >= 1 ? pid : undefined;
}

/**
 * The PID in `path`, re-read every sample. The application owns that file,
 * and readFile() took whatever it was: a named pipe put in its place blocked a
 * libuv thread for good (no report again, and SIGTERM logged 'stopped' but
 * the process never exited), and a 256 MiB file cost 6.8 s of CPU in 8 s and
 * 1.36 GB RSS. It is now read with readRegularFile (bounded-read.ts): a
 * regular file of at most MAX_PID_FILE_BYTES; anything else holds no valid
 * PID (LW_AGENT_PID_FILE).
 */
export async function readPidFile(path: string): Promise<number> {
  const r = await readRegularFile(path, MAX_PID_FILE_BYTES);
  if ('error' in r) {
    const why =
      r.error === 'not a regular file'
        ? `${path} is not a regular file`
        : r.error === 'too large'
          ? `${path} is over ${MAX_PID_FILE_BYTES} bytes: no process id`
          : `cannot read ${path}: ${r.error}`;
    throw new AgentError('LW_AGENT_PID_FILE', why);
  }
  const pid = parsePid(r.text);
  if (pid === undefined) {
    throw new AgentError('LW_AGENT_PID_FILE', `${path} does not hold a process id`);
  }
  return pid;
}

export type ProcessSample = { ok: true; metrics: ProcessMetrics } | { ok: false; reason: string };

export class ProcessSampler {
  private prev: { pid: number; ticks: number; atMs: number } | undefined;
  private readonly ticksPerS: number;
  private readonly now: () => number;

  constructor(private readonly opts: ProcessSamplerOptions) {
    this.ticksPerS = opts.clockTicksPerS ?? DEFAULT_CLOCK_TICKS_PER_S;
    this.now = opts.now ?? (() => performance.now());
  }

  async sample(): Promise<ProcessSample> {
    let pid: number;
    try {
      // Re-read the PID file every time: a supervisor may have restarted the service.
      pid = this.opts.pid ?? (await readPidFile(this.opts.pidFile!));
    } catch (err) {
      this.prev = undefined;
      return { ok: false, reason: (err as Error).message };
    }
    let stat: string;
    let status: string;
    try {
      [stat, status] = await Promise.all([
        readFile(`${this.opts.procRoot}/${pid}/stat`, 'utf8'),
        readFile(`${this.opts.procRoot}/${pid}/status`, 'utf8'),
      ]);
    } catch {
      this.prev = undefined;
      return { ok: false, reason: `process ${pid} is not running` };
    }
    const parsed = parseProcPidStat(stat);
    if (parsed === undefined)
      return { ok: false, reason: `cannot parse ${this.opts.procRoot}/${pid}/stat` };
    // An exited process not yet reaped was reported as running with 0 CPU and 0 RSS,
    // never down. It is as gone as a missing one.
    if (EXITED_STATES.has(parsed.state)) {
      this.prev = undefined;
      return { ok: false, reason: `process ${pid} is not running (state ${parsed.state})` };
    }
    const { ticks } = parsed;
    const rssBytes = parseVmRssBytes(status) ?? 0;
    const atMs = this.now();
    let cpuCores = 0;
    if (this.prev && this.prev.pid === pid && atMs > this.prev.atMs) {
      cpuCores = Math.max(
        0,
        (ticks - this.prev.ticks) / this.ticksPerS / ((atMs - this.prev.atMs) / 1000),
      );
    }
    this.prev = { pid, ticks, atMs };
    return { ok: true, metrics: { pid, cpuCores, rssBytes } };
  }
}
