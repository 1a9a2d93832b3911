/**
 * A strict checker of the Prometheus text exposition format 0.0.4: names,
 * label syntax and escapes, values, one contiguous block per family with
 * HELP/TYPE before its samples, no duplicate series, counters ending in
 * `_total`, and histograms with cumulative buckets, a `+Inf` bucket equal to
 * `_count`, and a `_sum`. Returns the errors found (none: valid).
 */
const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ([^ ]+)(?: (-?\d+))?$/;
const VALUE = /^(NaN|[+-]Inf|[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)$/;

interface Family {
  type: string;
  help: boolean;
  typeSeen: boolean;
}

function parseLabels(s: string, errs: string[], line: string): Record<string, string> {
  const labels: Record<string, string> = {};
  let i = 0;
  while (i < s.length) {
    const m = /^([a-zA-Z_][a-zA-Z0-9_]*)="/.exec(s.slice(i));
    if (!m) {
      errs.push(`bad label at ${i}: ${line}`);
      return labels;
    }
    i += m[0].length;
    let v = '';
    for (;;) {
      if (i >= s.length) {
        errs.push(`unterminated label value: ${line}`);
        return labels;
      }
      const c = s[i]!;
      if (c === '\\') {
        const n = s[i + 1];
        if (n === '\\') v += '\\';
        else if (n === '"') v += '"';
        else if (n === 'n') v += '\n';
        else errs.push(`bad escape \\${n}: ${line}`);
        i += 2;
        continue;
      }
      if (c === '"') {
        i++;
        break;
      }
      v += c;
      i++;
    }
    if (m[1]! in labels) errs.push(`duplicate label ${m[1]}: ${line}`);
    labels[m[1]!] = v;
    if (s[i] === ',') i++;
    else if (i < s.length) {
      errs.push(`expected , at ${i}: ${line}`);
      return labels;
    }
  }
  return labels;
}

export function checkExposition(text: string): string[] {
  const errs: string[] = [];
  const families = new Map<string, Family>();
  const closed = new Set<string>();
  const seen = new Set<string>();
  const hist = new Map<string, { buckets: [number, number][]; count?: number; sum?: number }>();
  let current: string | null = null;
  if (!text.endsWith('\n')) errs.push('does not end with newline');
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+)(?: (.*))?$/.exec(line);
      if (!m) continue;
      const [, kind, name, rest] = m as unknown as [string, string, string, string | undefined];
      if (!NAME.test(name)) errs.push(`bad name ${name}`);
      if (current !== null && current !== name) closed.add(current);
      if (closed.has(name)) errs.push(`family ${name} not contiguous`);
      current = name;
      const f = families.get(name) ?? { type: 'untyped', help: false, typeSeen: false };
      if (kind === 'TYPE') {
        if (f.typeSeen) errs.push(`dup TYPE ${name}`);
        f.typeSeen = true;
        f.type = rest ?? '';
        if (!/^(counter|gauge|histogram|summary|untyped)$/.test(f.type))
          errs.push(`bad type ${f.type}`);
      } else {
        if (f.help) errs.push(`dup HELP ${name}`);
        f.help = true;
      }
      families.set(name, f);
      continue;
    }
    const m = SAMPLE.exec(line);
    if (!m) {
      errs.push(`bad sample line: ${JSON.stringify(line).slice(0, 200)}`);
      continue;
    }
    const name = m[1]!;
    const val = m[4]!;
    const labels = m[3] !== undefined ? parseLabels(m[3], errs, line) : {};
    if (!VALUE.test(val)) errs.push(`bad value ${val}: ${line}`);
    let fam = name;
    for (const suffix of ['_bucket', '_sum', '_count']) {
      const base = name.slice(0, -suffix.length);
      if (name.endsWith(suffix) && families.get(base)?.type === 'histogram') fam = base;
    }
    if (fam !== current) errs.push(`sample of ${fam} outside its family block`);
    const key = name + JSON.stringify(Object.entries(labels).sort());
    if (seen.has(key)) errs.push(`duplicate series ${line}`);
    seen.add(key);
    const f = families.get(fam);
    if (f?.type === 'counter' && !name.endsWith('_total'))
      errs.push(`counter without _total ${name}`);
    if (f?.type === 'histogram') {
      const { le, ...rest } = labels;
      const k = fam + JSON.stringify(Object.entries(rest).sort());
      const h = hist.get(k) ?? { buckets: [] };
      hist.set(k, h);
      const value = Number(val);
      if (name.endsWith('_bucket')) h.buckets.push([le === '+Inf' ? Infinity : Number(le), value]);
      else if (name.endsWith('_count')) h.count = value;
      else h.sum = value;
    }
  }
  for (const [k, h] of hist) {
    const b = h.buckets.sort((x, y) => x[0] - y[0]);
    for (let i = 1; i < b.length; i++)
      if (b[i]![1] < b[i - 1]![1]) errs.push(`non-cumulative ${k}`);
    if (b.length === 0 || b[b.length - 1]![0] !== Infinity) errs.push(`no +Inf bucket ${k}`);
    else if (b[b.length - 1]![1] !== h.count) errs.push(`+Inf != count ${k}`);
    if (h.count === undefined || h.sum === undefined) errs.push(`missing sum/count ${k}`);
  }
  return errs;
}
