/*
 * loadwise dashboard page script. No framework, no build step.
 *
 * Reads the token from ?token=, opens the event stream <base>/events
 * (server-sent events: an `init` message with the current frame, the chart
 * history and recent events, then a `tick` per sampling interval) and redraws
 * the cards, the backend table, the charts (uPlot) and the event list.
 * Strings from the server are set with textContent, never innerHTML: backend
 * ids and reasons can come from the wire.
 */
(function () {
  'use strict';

  const base = document.querySelector('meta[name="loadwise-base"]').content;
  const token = new URLSearchParams(location.search).get('token') || '';
  const COLORS = ['#2457a6', '#d1495b', '#2a9d8f', '#e9a23b', '#7b4fb3', '#5b8c2a', '#c2571a'];
  const GATEWAY_COLORS = ['#1d2330', '#d1495b', '#e9a23b'];
  const MAX_EVENTS_SHOWN = 100;
  const RETRY_MS = 5000;

  const state = {
    intervalMs: 1000,
    historySec: 300,
    /** Backend ids in snapshot order; colours and chart series follow it. */
    ids: [],
    /** Chart points, oldest first. */
    history: [],
    /** Recent events by id (a coalesced entry is updated in place). */
    events: new Map(),
    lastMessageAt: 0,
    charts: [],
    hasBroker: false,
    frames: 0,
  };

  // ---------------------------------------------------------------- helpers

  const $ = (id) => document.getElementById(id);

  /** A DOM element: el('td', { class: 'num' }, 'text', childNode, ...). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'style') Object.assign(node.style, v);
      else node.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      node.append(typeof c === 'string' || typeof c === 'number' ? String(c) : c);
    }
    return node;
  }

  function pct(x) {
    return x === null || x === undefined ? '–' : `${Math.round(x * 100)}%`;
  }

  function ms(x) {
    if (x === null || x === undefined) return '–';
    if (x >= 10000) return `${Math.round(x / 1000)} s`;
    if (x >= 1000) return `${(x / 1000).toFixed(1)} s`;
    return `${x < 10 ? x.toFixed(1) : Math.round(x)} ms`;
  }

  function num(n) {
    return n === null || n === undefined ? '–' : n.toLocaleString('en-US');
  }

  function clock(t) {
    return new Date(t).toLocaleTimeString('en-GB', { hour12: false });
  }

  function setText(id, text) {
    $(id).textContent = text;
  }

  /** Highlights the card that holds element `id`: 'warn', 'bad' or '' (none). */
  function setAlert(id, level) {
    $(id).closest('.card').dataset.alert = level || '';
  }

  function colorOf(id) {
    const i = state.ids.indexOf(id);
    return COLORS[(i < 0 ? 0 : i) % COLORS.length];
  }

  /** Per-second rate of a running total between the last two points, or null. */
  function rateAt(points, i, key) {
    const p = points[i];
    const prev = points[i - 1];
    if (!p || !prev || p.gap || prev.gap || p.t <= prev.t) return null;
    return Math.max(0, (p[key] - prev[key]) / ((p.t - prev.t) / 1000));
  }

  // ------------------------------------------------------------------ cards

  function renderGateway(f) {
    // Over the whole fleet: in a large one the frame lists only some backends (see renderBackends).
    const healthy = f.fleet.states.healthy;
    setText('strategy', f.strategy);
    setText(
      'routing',
      f.panic
        ? `PANIC: ${num(healthy)} of ${num(f.fleet.total)} healthy, spreading over all`
        : `${num(healthy)} of ${num(f.fleet.total)} backends healthy`,
    );
    setAlert('strategy', f.panic ? 'bad' : '');

    const b = f.broker;
    setText('broker', b.connected === null ? 'none' : b.connected ? 'connected' : 'disconnected');
    setText('broker-url', b.url || 'routing on local signals only');
    setAlert('broker', b.connected === false ? 'warn' : '');

    setText('eld', f.eventLoopDelayMs === null ? 'off' : ms(f.eventLoopDelayMs));
    setText(
      'eld-sub',
      f.overloaded
        ? 'OVERLOADED: shedding new requests'
        : f.maxEventLoopDelayMs === null
          ? 'overload protection is off'
          : `sheds above ${ms(f.maxEventLoopDelayMs)}`,
    );
    setAlert('eld', f.overloaded ? 'bad' : '');

    setText('queue', `${num(f.queue.length)} / ${num(f.queue.size)}`);
    setText('queue-sub', `every backend full: wait at most ${ms(f.queue.timeoutMs)}`);
    setAlert('queue', f.queue.length > 0 ? 'warn' : '');

    setText('inflight', num(f.inFlight));

    const points = state.history;
    const shedTotal = Object.values(f.shed).reduce((a, n) => a + n, 0);
    const shedRate = rateAt(points, points.length - 1, 'shed');
    setText('shed', num(shedTotal));
    setText(
      'shed-sub',
      `saturated ${num(f.shed.saturated)} · overloaded ${num(f.shed.overloaded)} · no backend ${num(f.shed['no-backend'])} · draining ${num(f.shed.draining ?? 0)}`,
    );
    setAlert('shed', shedRate ? 'warn' : '');

    const retryRate = rateAt(points, points.length - 1, 'retries');
    setText('retries', num(f.retries));
    setText('retries-sub', `${retryRate === null ? '–' : retryRate.toFixed(1)}/s now`);

    const codes = Object.entries(f.dropped).sort((a, b) => b[1] - a[1]);
    setText('dropped', num(codes.reduce((a, [, n]) => a + n, 0)));
    setText('dropped-sub', codes.length ? `most: ${codes[0][0]}` : 'none');
    const tbody = $('dropped-codes').tBodies[0];
    tbody.replaceChildren(
      ...(codes.length
        ? codes.map(([code, n]) =>
            el('tr', {}, el('td', {}, code), el('td', { class: 'num' }, num(n))),
          )
        : [el('tr', {}, el('td', { class: 'empty', colspan: '2' }, 'no report dropped'))]),
    );
  }

  // ---------------------------------------------------------- backend table

  /** No fresh report. Without a broker none is expected: "stale" would only be noise. */
  function isStale(b) {
    return !b.fresh && (b.reportAgeMs !== null || state.hasBroker);
  }

  function stateCell(b) {
    const badges = [el('span', { class: 'badge', 'data-state': b.state }, b.state)];
    const stale = isStale(b);
    if (stale) {
      badges.push(
        ' ',
        el(
          'span',
          {
            class: 'badge',
            'data-kind': 'stale',
            title: 'no fresh report: routing on local signals',
          },
          'stale',
        ),
      );
    }
    if (b.slowStart < 1) {
      badges.push(
        ' ',
        el('span', { class: 'badge', 'data-kind': 'slow-start' }, `slow start ${pct(b.slowStart)}`),
      );
    }
    let reason = b.reason;
    if (b.ejectedForMs !== null) reason = `${reason || 'ejected'}; back in ${ms(b.ejectedForMs)}`;
    if (!reason && stale) {
      reason = b.reportAgeMs === null ? 'no report yet' : `last report ${ms(b.reportAgeMs)} ago`;
    }
    return el('td', {}, ...badges, reason ? el('div', { class: 'reason' }, reason) : null);
  }

  function shareBar(share) {
    return el(
      'div',
      { class: 'bar' },
      el('span', { style: { width: `${Math.round(share * 100)}%` } }),
      el('em', {}, pct(share)),
    );
  }

  function renderBackends(f) {
    const rows = f.backends.map((b) =>
      el(
        'tr',
        {
          'data-backend': b.id,
          'data-state': b.state,
          'data-stale': String(isStale(b)),
        },
        el(
          'td',
          {},
          el('span', { class: 'swatch', style: { background: colorOf(b.id) } }),
          el('span', { class: 'backend-id' }, b.id),
          el('div', { class: 'url' }, b.url),
        ),
        stateCell(b),
        el('td', { class: 'num' }, pct(b.cpu)),
        el('td', { class: 'num' }, pct(b.mem)),
        el('td', { class: 'num' }, `${num(b.busy)} / ${num(b.slots)}`),
        el('td', { class: 'num' }, num(b.queued)),
        el('td', { class: 'num' }, num(b.inFlight)),
        el('td', { class: 'num' }, ms(b.latencyMs)),
        el('td', { class: 'num' }, ms(b.expectedWaitMs)),
        el('td', {}, shareBar(b.share)),
        el('td', { class: 'num' }, b.reportAgeMs === null ? '–' : `${ms(b.reportAgeMs)} ago`),
        el('td', { class: 'num' }, num(b.ejections)),
        el('td', { class: 'num' }, `${num(b.failures)} / ${num(b.requests)}`),
      ),
    );
    // Above MAX_DETAILED_BACKENDS (src/dashboard/frame.ts) the gateway sends only the ones
    // that matter most; say how many more there are, and how they fare.
    const omitted = f.fleet.omitted;
    if (omitted > 0) {
      const st = f.fleet.states;
      rows.push(
        el(
          'tr',
          { class: 'omitted', 'data-omitted': String(omitted) },
          el(
            'td',
            { colspan: '13' },
            `${num(omitted)} more backend${omitted === 1 ? '' : 's'} not shown. ` +
              `This table lists ${num(f.backends.length)} of ${num(f.fleet.total)}: ` +
              'those not healthy, recently changed or stale first, then the busiest. ' +
              `The fleet: ${num(st.healthy)} healthy, ${num(st.ejected)} ejected, ` +
              `${num(st.down)} down, ${num(st.draining)} draining, ${num(f.fleet.stale)} stale.`,
          ),
        ),
      );
    }
    $('backends').tBodies[0].replaceChildren(...rows);
  }

  // ----------------------------------------------------------------- charts

  /**
   * Each chart: per backend (one line per backend, element `index` of the
   * point's backend tuple, see Point in src/dashboard/frame.ts) or
   * gateway-wide lines.
   */
  const CHARTS = [
    { title: 'traffic share (%)', index: 0, factor: 100, max: 100 },
    { title: 'expected wait (ms)', index: 1 },
    { title: 'latency seen by the gateway (ms)', index: 2 },
    { title: 'CPU, as reported (%)', index: 3, factor: 100, max: 100 },
    { title: 'in flight from this gateway', index: 5 },
    { title: 'busy + queued in the backend, as reported', index: 4 },
    {
      title: 'gateway: event-loop delay (ms)',
      lines: [{ label: 'event-loop delay', value: (p) => p.eventLoopDelayMs }],
    },
    {
      title: 'gateway: waiting, shed/s, retries/s',
      lines: [
        { label: 'waiting (saturation queue)', value: (p) => p.queue },
        { label: 'shed/s', value: (p, i, all) => rateAt(all, i, 'shed') },
        { label: 'retries/s', value: (p, i, all) => rateAt(all, i, 'retries') },
      ],
    },
  ];

  function seriesOf(spec) {
    if (spec.lines) {
      return spec.lines.map((line, k) => ({
        label: line.label,
        stroke: GATEWAY_COLORS[k],
        value: line.value,
      }));
    }
    return state.ids.map((id) => ({
      label: id,
      stroke: colorOf(id),
      value: (p) => {
        const v = p.backends[id] ? p.backends[id][spec.index] : null;
        return v === null || v === undefined ? null : v * (spec.factor || 1);
      },
    }));
  }

  function dataOf(series) {
    const points = state.history;
    const xs = points.map((p) => p.t / 1000);
    const ys = series.map((s) => points.map((p, i) => (p.gap ? null : s.value(p, i, points))));
    return [xs, ...ys];
  }

  function chartWidth(node) {
    return Math.max(200, node.clientWidth - 12);
  }

  /** A row of colour swatches and labels: [[label, colour], ...]. */
  function legendOf(entries, id) {
    return el(
      'div',
      { class: 'legend', id },
      ...entries.map(([label, color]) =>
        el('span', {}, el('span', { class: 'swatch', style: { background: color } }), label),
      ),
    );
  }

  function buildCharts() {
    for (const c of state.charts) c.plot.destroy();
    const container = $('charts');
    container.replaceChildren();
    state.charts = CHARTS.map((spec) => {
      const node = el('div', { class: 'chart' });
      container.append(node);
      const series = seriesOf(spec);
      const yRange = (u, min, max) => [0, spec.max || (max > 0 ? max * 1.15 : 1)];
      // Ends at the newest point; spans what history there is (at least a minute,
      // at most historySec), so a page opened a moment ago is not a sliver at the right.
      const xRange = () => {
        const points = state.history;
        const end = (points.length ? points[points.length - 1].t : Date.now()) / 1000;
        const first = points.length ? points[0].t / 1000 : end;
        return [Math.max(end - state.historySec, Math.min(first, end - 60)), end];
      };
      const plot = new uPlot(
        {
          title: spec.title,
          width: chartWidth(node),
          height: 160,
          // Backend lines share the legend above the charts; gateway lines get one below (see end).
          legend: { show: false },
          cursor: { drag: { x: false, y: false } },
          scales: { x: { time: true, range: xRange }, y: { range: yRange } },
          axes: [
            {
              stroke: '#687083',
              grid: { stroke: '#eef0f3' },
              ticks: { stroke: '#e2e5ea' },
              values: (u, splits) => splits.map((t) => clock(t * 1000)),
            },
            {
              stroke: '#687083',
              grid: { stroke: '#eef0f3' },
              ticks: { stroke: '#e2e5ea' },
              size: 48,
            },
          ],
          series: [
            {},
            ...series.map((s) => ({
              label: s.label,
              stroke: s.stroke,
              width: 1.5,
              points: { show: false },
            })),
          ],
        },
        dataOf(series),
        node,
      );
      if (spec.lines) node.append(legendOf(series.map((x) => [x.label, x.stroke])));
      return { plot, series, node };
    });
    $('legend').replaceWith(
      legendOf(
        state.ids.map((id) => [id, colorOf(id)]),
        'legend',
      ),
    );
  }

  function updateCharts() {
    for (const c of state.charts) c.plot.setData(dataOf(c.series));
  }

  window.addEventListener('resize', () => {
    for (const c of state.charts) c.plot.setSize({ width: chartWidth(c.node), height: 160 });
  });

  // ----------------------------------------------------------------- events

  function renderEvents() {
    const entries = [...state.events.values()]
      .sort((a, b) => b.id - a.id)
      .slice(0, MAX_EVENTS_SHOWN);
    const list = $('events');
    if (entries.length === 0) {
      list.replaceChildren(el('li', { class: 'empty' }, 'nothing happened yet'));
      return;
    }
    list.replaceChildren(
      ...entries.map((e) =>
        el(
          'li',
          { 'data-level': e.level, 'data-event': e.event },
          el('time', { datetime: new Date(e.lastAt).toISOString() }, clock(e.lastAt)),
          el('span', {}, e.msg),
        ),
      ),
    );
  }

  function addEvents(list) {
    for (const e of list) state.events.set(e.id, e);
    if (state.events.size > 4 * MAX_EVENTS_SHOWN) {
      const keep = [...state.events.keys()].sort((a, b) => b - a).slice(0, MAX_EVENTS_SHOWN);
      const kept = new Map(keep.map((id) => [id, state.events.get(id)]));
      state.events = kept;
    }
  }

  // ---------------------------------------------------------------- updates

  function trimHistory() {
    const from = Date.now() - state.historySec * 1000;
    let i = 0;
    while (i < state.history.length && state.history[i].t < from) i++;
    if (i > 0) state.history.splice(0, i);
  }

  /** Rebuilds the charts when the set of backends changed (discovery), else feeds them. */
  function render(frame) {
    state.hasBroker = frame.broker.connected !== null;
    const ids = frame.backends.map((b) => b.id);
    const changed = ids.join('\n') !== state.ids.join('\n');
    state.ids = ids;
    renderGateway(frame);
    renderBackends(frame);
    renderEvents();
    if (changed || state.charts.length === 0) buildCharts();
    else updateCharts();
    setText('updated', `updated ${clock(frame.t)}`);
    // For scripts and tests that watch the page: how many frames it has drawn.
    state.frames++;
    document.body.dataset.frames = String(state.frames);
  }

  function onInit(msg) {
    state.intervalMs = msg.intervalMs;
    state.historySec = msg.historySec;
    setText('history-min', String(Math.round(msg.historySec / 60)));
    state.history = msg.history.slice();
    state.events = new Map();
    addEvents(msg.events);
    state.ids = [];
    render(msg.frame);
  }

  function onTick(msg) {
    state.history.push(msg.point);
    trimHistory();
    addEvents(msg.events);
    render(msg.frame);
  }

  // ------------------------------------------------------------- connection

  function setConn(kind, text) {
    const pill = $('conn');
    pill.dataset.conn = kind;
    pill.textContent = text;
  }

  function connect() {
    const source = new EventSource(`${base}/events?token=${encodeURIComponent(token)}`);
    const handle = (fn) => (e) => {
      state.lastMessageAt = Date.now();
      setConn('live', 'live');
      fn(JSON.parse(e.data));
    };
    source.addEventListener('init', handle(onInit));
    source.addEventListener('tick', handle(onTick));
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (token, viewer cap) or the gateway went away: try again later ourselves.
        source.close();
        setConn('disconnected', 'disconnected, retrying…');
        setTimeout(connect, RETRY_MS);
      } else {
        setConn('reconnecting', 'reconnecting…');
      }
    };
  }

  // A stream that stops without closing (a stuck proxy) shows as stalled.
  setInterval(() => {
    const silentMs = Date.now() - state.lastMessageAt;
    if (
      state.lastMessageAt &&
      silentMs > 3 * state.intervalMs &&
      $('conn').dataset.conn === 'live'
    ) {
      setConn('stalled', `no update for ${ms(silentMs)}`);
    }
  }, 1000);

  renderEvents();
  connect();
})();
