/**
 * Renders a gateway's status JSON (what `statusPath` serves, observability/
 * snapshot.ts) as the table `loadwise status` prints. The JSON may come from
 * another version of the gateway, or from whatever else `--url` names, so
 * every field is read defensively: a missing, null or malformed figure prints
 * as '-', a row that is not an object is skipped, never a crash.
 */
import type { BackendSnapshot, BalancerSnapshot } from '../observability';

type Loose<T> = { [K in keyof T]?: T[K] | null };

/** C0 and C1 controls, DEL, and bidirectional overrides (U+202E makes an id read as another). */
// eslint-disable-next-line no-control-regex
const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g;

/**
 * A string from the document as one line of plain text: control characters (ESC, CR, LF,
 * C1) and bidirectional overrides become '?'. The document comes from whatever `--url`
 * names; an escape sequence in an id or a reason would otherwise reach the operator's
 * terminal. Only a string, number or boolean is text; anything else prints as '-':
 * String() of an object from the document threw (`{"id":{"toString":1}}`: a TypeError and
 * its stack instead of the table) or printed `[object Object]`.
 */
export function text(v: unknown): string {
  if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') return '-';
  return String(v).replace(UNPRINTABLE, '?');
}

/** An object of the document (not null, not an array): what a backend or a balancer must be. */
function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * JSON text safe for a terminal: JSON.stringify escapes U+0000-U+001F only, so a
 * hostile status document's C1 controls (U+009B is CSI, U+009D OSC), DEL and
 * bidirectional overrides (U+202E, to make an id read as another) reached the
 * terminal raw with `--json`. Escaped as `\uXXXX`, which every JSON reader reads back.
 */
export function terminalJson(v: unknown): string {
  // UNPRINTABLE's C0 range never matches here: JSON.stringify has escaped it already.
  return JSON.stringify(v).replace(
    UNPRINTABLE,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

function ms(v: unknown): string {
  const n = num(v);
  if (n === undefined) return '-';
  if (n >= 10_000) return `${(n / 1000).toFixed(0)} s`;
  if (n >= 1000) return `${(n / 1000).toFixed(1)} s`;
  return n >= 100 ? `${n.toFixed(0)} ms` : `${n.toFixed(1)} ms`;
}

function pct(v: unknown): string {
  const n = num(v);
  return n === undefined ? '-' : `${Math.round(n * 100)}%`;
}

function int(v: unknown): string {
  const n = num(v);
  return n === undefined ? '-' : String(Math.round(n));
}

function stateCell(b: Loose<BackendSnapshot>): string {
  const state = typeof b.state === 'string' ? text(b.state) : '?';
  return b.stateReason ? `${state}: ${text(b.stateReason)}` : state;
}

function reportCell(b: Loose<BackendSnapshot>): string {
  if (num(b.reportAgeMs) === undefined) return 'none';
  return b.reportFresh === false ? `${ms(b.reportAgeMs)} stale` : ms(b.reportAgeMs);
}

/** The backend's own count of requests in its handlers, over its limit when reported. */
function busyCell(b: Loose<BackendSnapshot>): string {
  const r = b.lastReport;
  if (!r || num(r.inFlight) === undefined) return '-';
  return num(r.concurrencyLimit) === undefined
    ? int(r.inFlight)
    : `${int(r.inFlight)}/${int(r.concurrencyLimit)}`;
}

export const COLUMNS = [
  'ID',
  'STATE',
  'SHARE',
  'IN-FLIGHT',
  'LATENCY',
  'EXP. WAIT',
  'REPORT AGE',
  'CPU',
  'MEM',
  'BUSY',
  'QUEUED',
] as const;

export function backendRow(b: Loose<BackendSnapshot>): string[] {
  return [
    text(b.id ?? '?'),
    stateCell(b),
    pct(b.trafficShare),
    int(b.inFlight),
    ms(b.latencyMs),
    ms(b.expectedWaitMs),
    reportCell(b),
    pct(b.lastReport?.cpuUtilization),
    pct(b.lastReport?.memoryUtilization),
    busyCell(b),
    int(b.lastReport?.queued),
  ];
}

/** Left-aligned columns two spaces apart; the last column is not padded. */
export function table(header: readonly string[], rows: string[][]): string[] {
  // A loop, not Math.max(...rows): spread as arguments, 150,000 rows overflowed the stack.
  const widths = header.map((h) => h.length);
  for (const r of rows) {
    for (let i = 0; i < widths.length; i++) widths[i] = Math.max(widths[i]!, (r[i] ?? '').length);
  }
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('  ')
      .trimEnd();
  return [line(header), ...rows.map(line)];
}

/** One balancer: its summary line (named by its `service` when it has one), warnings and table. */
function balancerBlock(s: Loose<BalancerSnapshot>): string[] {
  const broker =
    s.brokerConnected === true
      ? 'broker connected'
      : s.brokerConnected === false
        ? 'broker DISCONNECTED'
        : 'no broker';
  const service = typeof s.service === 'string' ? `service ${text(s.service)}: ` : '';
  // Absent from an older gateway's snapshot, and left out at 0.
  const ws = (num(s.openWebSockets) ?? 0) > 0 ? `, ${int(s.openWebSockets)} WebSockets open` : '';
  const streams = (num(s.openStreams) ?? 0) > 0 ? `, ${int(s.openStreams)} streams open` : '';
  const lines = [
    `${service}strategy ${text(s.strategy ?? '?')}, ${int(s.inFlight)} in flight${ws}${streams}, ${broker}, event loop ${ms(s.eventLoopDelayMs)}`,
  ];
  if (s.overloaded) lines.push('OVERLOADED: the gateway is shedding new requests (503)');
  if (s.panic) lines.push('PANIC: too few healthy backends, routing over every routable one');
  if ((num(s.saturationQueueLength) ?? 0) > 0)
    lines.push(`SATURATED: ${int(s.saturationQueueLength)} requests wait for a backend slot`);
  // A row that is not an object (`"backends": [null]`) is skipped: reading its fields threw.
  const backends = Array.isArray(s.backends)
    ? (s.backends.filter(isRecord) as Loose<BackendSnapshot>[])
    : [];
  return [...lines, '', ...table(COLUMNS, backends.map(backendRow))];
}

/** What a status endpoint serves: one balancer's snapshot, or several under `services` (statusHandler). */
export type StatusDocument = Loose<BalancerSnapshot> & { services?: unknown };

/** The balancers a status document holds: its `services`, or the document itself. */
export function balancersOf(doc: StatusDocument): Loose<BalancerSnapshot>[] {
  return Array.isArray(doc.services) ? (doc.services as Loose<BalancerSnapshot>[]) : [doc];
}

/**
 * The whole frame: the source and time, then per balancer a summary line,
 * warnings and the table (one block per service on a page of several), and a
 * legend line.
 */
export function renderStatus(doc: StatusDocument, source: string): string {
  const balancers = balancersOf(doc).filter(isRecord) as Loose<BalancerSnapshot>[];
  const blocks = balancers.flatMap((s, i) => [...(i > 0 ? [''] : []), ...balancerBlock(s)]);
  const windowMs = balancers.map((s) => num(s.trafficWindowMs)).find((n) => n !== undefined);
  const legend = `SHARE: of this gateway's requests over the last ${windowMs === undefined ? 'window' : ms(windowMs)}; IN-FLIGHT, LATENCY, EXP. WAIT: as this gateway sees it; CPU, MEM, BUSY, QUEUED: from the agent's last report`;
  return [`${text(source)}  ${text(doc.takenAt ?? '')}`.trimEnd(), ...blocks, '', legend, ''].join(
    '\n',
  );
}
