// The schedd dashboard: polls the ui plugin's JSON API every `refresh` seconds, keeps a ring
// buffer of /api/v1/stats samples for the charts, and draws everything with plain DOM and SVG.
// Rules: data from the daemon is only ever written with textContent (node ids, pools and
// capabilities come from nodes); the token is taken from this page's ?token= and sent as a
// bearer header; no network access but this origin (the page's CSP enforces it).
(() => {
  "use strict";

  const HISTORY_MS = 10 * 60 * 1000; // the most the charts show
  const MIN_SPAN_MS = 60 * 1000; // the least: a fresh page spreads its first minute out
  const { token, el, svg, get } = scheddUi;
  const meta = document.querySelector('meta[name="schedd-refresh"]');
  const refreshMs = Math.max(200, 1000 * (parseFloat(meta ? meta.content : "2") || 2));
  const samples = []; // ring buffer of {t, submitted, finished, rate, p50, p90, p99, queued, running}
  let previous = null; // the last stats document, for per-interval rates
  let filterText = "";
  let lastData = null;

  const $ = (id) => document.getElementById(id);

  // -- formatting ------------------------------------------------------------------------------

  function fmtNum(v, digits = 0) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    return v.toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
  }

  function fmtRate(v) {
    if (v === null || v === undefined) return "–";
    return v >= 100 ? fmtNum(v, 0) : v >= 10 ? fmtNum(v, 1) : fmtNum(v, 2);
  }

  function fmtMs(v) {
    if (v === null || v === undefined) return "–";
    if (v < 1000) return `${Math.round(v)} ms`;
    if (v < 60000) return `${(v / 1000).toFixed(v < 10000 ? 2 : 1)} s`;
    return `${(v / 60000).toFixed(1)} min`;
  }

  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined) return "never";
    if (seconds < 60) return `${seconds.toFixed(1)} s ago`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
    return `${(seconds / 3600).toFixed(1)} h ago`;
  }

  function fmtIn(ms) {
    const s = ms / 1000;
    return s >= 0 ? `${s.toFixed(0)} s left` : `${(-s).toFixed(0)} s ago`;
  }

  // -- data --------------------------------------------------------------------------------------

  function finishedTotal(stats) {
    const t = stats.totals;
    return t.done + t.failed + t.canceled + t.timed_out;
  }

  function record(stats) {
    let submitted = null;
    let finished = null;
    if (previous && stats.now_ms > previous.now_ms) {
      const dt = (stats.now_ms - previous.now_ms) / 1000;
      submitted = Math.max(0, stats.totals.submitted - previous.totals.submitted) / dt;
      finished = Math.max(0, finishedTotal(stats) - finishedTotal(previous)) / dt;
    }
    previous = stats;
    const latency = stats.latency_ms.submit_to_done;
    samples.push({
      t: stats.now_ms,
      submitted,
      finished,
      rate: stats.throughput.finished_per_s,
      p50: latency.p50, p90: latency.p90, p99: latency.p99,
      queued: stats.jobs.queued,
      running: stats.jobs.assigned + stats.jobs.running,
    });
    while (samples.length && samples[0].t < stats.now_ms - HISTORY_MS) samples.shift();
  }

  // -- charts ----------------------------------------------------------------------------------

  // the top of a y axis with 4 round steps; counts get whole steps
  function niceTop(v, whole) {
    if (!(v > 0)) return whole ? 4 : 1;
    const step = v / 4;
    const p = Math.pow(10, Math.floor(Math.log10(step)));
    for (const m of whole ? [1, 2, 5, 10] : [1, 2, 2.5, 5, 10]) {
      if (m * p >= step && (!whole || m * p >= 1)) return 4 * m * p;
    }
    return 40 * p;
  }

  function fmtAgo(ms) {
    return ms >= 60000 ? `-${+(ms / 60000).toFixed(1)} min` : `-${Math.round(ms / 1000)} s`;
  }

  // x axis ticks: round steps back from now, at most 5 of them
  function timeTicks(span) {
    const step = [10, 15, 30, 60, 120, 180, 300].map((s) => s * 1000).find((s) => span / s <= 5) || 300000;
    const ticks = [];
    for (let ago = step; ago <= span - step / 3; ago += step) ticks.push(ago);
    return ticks;
  }

  // series: [{name, color, key}], values from `samples`; fmt formats the y axis labels
  function drawChart(id, series, fmt, nowMs, whole) {
    const chart = $(id);
    const W = 440, H = 150, L = 46, R = 8, T = 18, B = 18;
    chart.replaceChildren();
    const span = Math.min(HISTORY_MS, Math.max(MIN_SPAN_MS, samples.length ? nowMs - samples[0].t : 0));
    const x0 = nowMs - span;
    const xOf = (t) => L + ((t - x0) / span) * (W - L - R);
    let top = 0;
    for (const s of samples) for (const line of series) {
      const v = s[line.key];
      if (v !== null && v !== undefined && v > top) top = v;
    }
    top = niceTop(top, whole);
    const yOf = (v) => H - B - (v / top) * (H - T - B);
    for (let i = 0; i <= 4; i++) {
      const v = (top * i) / 4;
      const y = yOf(v);
      chart.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: i ? "grid" : "axis" }));
      chart.append(svg("text", { x: L - 4, y: y + 3, "text-anchor": "end" }, fmt(v)));
    }
    for (const ago of timeTicks(span)) {
      chart.append(svg("line", { x1: xOf(nowMs - ago), x2: xOf(nowMs - ago), y1: T, y2: H - B, class: "grid" }));
      chart.append(svg("text", { x: xOf(nowMs - ago), y: H - 4, "text-anchor": "middle" }, fmtAgo(ago)));
    }
    chart.append(svg("text", { x: W - R, y: H - 4, "text-anchor": "end" }, "now"));
    let legendX = L;
    for (const line of series) {
      chart.append(svg("rect", { x: legendX, y: 4, width: 10, height: 3, fill: line.color }));
      const label = svg("text", { x: legendX + 13, y: 9, class: "legend" }, line.name);
      chart.append(label);
      legendX += 20 + 7 * line.name.length;
      const points = [];
      for (const s of samples) {
        const v = s[line.key];
        if (v === null || v === undefined) continue;
        points.push(`${xOf(s.t).toFixed(1)},${yOf(v).toFixed(1)}`);
      }
      if (points.length) {
        chart.append(svg("polyline", { points: points.join(" "), class: "line", stroke: line.color, "data-series": line.key }));
      }
    }
    if (samples.length < 2) {
      chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "collecting samples…"));
    }
  }

  function drawCharts(nowMs) {
    drawChart("chart-throughput", [
      { name: "submitted", key: "submitted", color: "#2563eb" },
      { name: "finished", key: "finished", color: "#15803d" },
      { name: "finished (1 min avg)", key: "rate", color: "#a3a3a3" },
    ], (v) => fmtRate(v), nowMs, false);
    drawChart("chart-latency", [
      { name: "p50", key: "p50", color: "#15803d" },
      { name: "p90", key: "p90", color: "#b45309" },
      { name: "p99", key: "p99", color: "#b91c1c" },
    ], (v) => fmtMs(v), nowMs, false);
    drawChart("chart-backlog", [
      { name: "queued", key: "queued", color: "#b45309" },
      { name: "assigned + running", key: "running", color: "#2563eb" },
    ], (v) => fmtNum(v), nowMs, true);
  }

  // -- tables ----------------------------------------------------------------------------------

  function fillRows(table, rows, emptyText, columns) {
    const body = document.querySelector(`#${table} tbody`);
    if (!rows.length) {
      const tr = el("tr", { class: "empty-row" });
      tr.append(el("td", { colspan: String(columns) }, emptyText));
      body.replaceChildren(tr);
      return;
    }
    body.replaceChildren(...rows);
  }

  function matches(...texts) {
    if (!filterText) return true;
    return texts.some((t) => String(t).toLowerCase().includes(filterText));
  }

  const STATE_ORDER = { online: 0, draining: 1, offline: 2 };

  // An online node is marked when its liveness has run out (the reaper is about to take it
  // offline): its heartbeat age alone says little, an unchanged node's beat is written to Redis
  // only every [nodes] liveness_refresh beats.
  function renderNodes(nodes, nowMs) {
    const sorted = [...nodes].sort((a, b) =>
      (STATE_ORDER[a.state] ?? 3) - (STATE_ORDER[b.state] ?? 3) || a.node_id.localeCompare(b.node_id));
    const rows = [];
    for (const n of sorted) {
      if (!matches(n.node_id, n.owner, n.pools.join(" "), n.state)) continue;
      const tr = el("tr", { "data-node": n.node_id, "data-state": n.state });
      tr.append(el("td", { class: "id" }, n.node_id));
      const state = el("td");
      state.append(el("span", { class: `pill ${n.state}` }, n.state));
      if (n.reason && n.state !== "online") state.title = n.reason;
      tr.append(state);
      const slots = el("td");
      const wrap = el("span", { class: "slots" });
      const meter = el("span", { class: n.capacity && n.used >= n.capacity ? "meter full" : "meter" });
      const fill = el("span");
      fill.style.width = `${n.capacity ? Math.min(100, (100 * n.used) / n.capacity) : 0}%`;
      meter.append(fill);
      wrap.append(meter, el("span", null, `${n.used}/${n.capacity}`));
      slots.append(wrap);
      tr.append(slots);
      tr.append(el("td", { class: "num" }, fmtNum(n.load, 2)));
      tr.append(el("td", { class: "pools" }, n.pools.join(", ") || "–"));
      const age = el("td", null, fmtAge(n.heartbeat_age_s));
      if (n.state === "online" && n.alive_until_ms !== null && n.alive_until_ms < nowMs) age.className = "stale";
      tr.append(age);
      tr.append(el("td", { class: "id" }, n.owner || "–"));
      tr.append(el("td", { class: "num" }, n.protocol || "–"));
      rows.push(tr);
    }
    const online = nodes.filter((n) => n.state === "online").length;
    $("nodes-count").textContent = `${online} online of ${nodes.length}`;
    fillRows("nodes", rows, nodes.length ? "no node matches the filter" : "no nodes registered", 8);
  }

  function renderPools(pools) {
    const sorted = [...pools].sort((a, b) => b.queued - a.queued || a.pool.localeCompare(b.pool));
    const rows = [];
    for (const p of sorted) {
      const members = Object.entries(p.members);
      if (!matches(p.pool, members.map(([m]) => m).join(" "))) continue;
      const tr = el("tr", { "data-pool": p.pool });
      tr.append(el("td", { class: "id" }, p.pool));
      tr.append(el("td", { class: "num" }, fmtNum(p.free_slots)));
      tr.append(el("td", { class: "num" }, fmtNum(p.queued)));
      const shown = members.slice(0, 12).map(([m, free]) => `${m}:${free}`).join(" ");
      tr.append(el("td", { class: "members" }, members.length > 12 ? `${shown} … (+${members.length - 12})` : shown || "–"));
      rows.push(tr);
    }
    $("pools-count").textContent = `${pools.length}`;
    fillRows("pools", rows, pools.length ? "no pool matches the filter" : "no pools", 4);
  }

  function renderInstances(data) {
    const rows = data.instances.map((i) => {
      const tr = el("tr", { "data-instance": i.instance });
      tr.append(el("td", { class: "id" }, i.instance));
      const state = el("td");
      state.append(el("span", { class: `pill ${i.alive ? "alive" : "expired"}` }, i.alive ? "alive" : "expired"));
      state.append(el("span", { class: "muted small" }, ` ${fmtIn(i.expires_ms - data.now_ms)}`));
      state.title = "presence is refreshed while the instance runs";
      tr.append(state);
      const mark = el("td");
      if (i.this) mark.append(el("span", { class: "pill this" }, "this"));
      tr.append(mark);
      return tr;
    });
    fillRows("instances", rows, "no instances", 3);
    const c = data.this.connections;
    const listeners = Object.entries(data.this.listeners).map(([k, v]) => `${k} ${v}`).join(", ");
    $("local").textContent = `this instance: ${c.node} node, ${c.client} client connections; ${listeners}`;
    $("this-instance").textContent = data.this.instance;
    $("this-version").textContent = data.this.version;
  }

  // Connections of every live instance, oldest first (a principal names a token, never shows it).
  function renderClients(clients, nowMs) {
    const rows = clients.map((c) => {
      const tr = el("tr", { "data-client": `${c.instance} ${c.peer}` });
      tr.append(el("td", { class: "id" }, c.instance));
      tr.append(el("td", { class: "id" }, c.principal));
      tr.append(el("td", { class: "id" }, c.peer));
      tr.append(el("td", { class: "num" }, c.protocol || "–"));
      tr.append(el("td", null, c.name || "–"));
      tr.append(el("td", null, fmtAge(Math.max(0, nowMs - c.connected_ms) / 1000)));
      return tr;
    });
    $("clients-count").textContent = `${clients.length}`;
    fillRows("clients", rows, "no clients connected", 6);
  }

  // Usage per principal, the most recently active first (a principal names a token, never shows it).
  function renderTenants(tenants) {
    const rows = tenants.map((t) => {
      const tr = el("tr", { "data-principal": t.principal });
      tr.append(el("td", { class: "id" }, t.principal));
      tr.append(el("td", { class: "num" }, t.max_in_flight ? `${fmtNum(t.in_flight)} / ${fmtNum(t.max_in_flight)}` : fmtNum(t.in_flight)));
      tr.append(el("td", { class: "num" }, fmtNum(t.queued)));
      tr.append(el("td", { class: "num" }, fmtNum(t.payload_bytes)));
      const refused = Object.entries(t.refused).map(([code, n]) => `${code} ${fmtNum(n)}`).join(", ");
      tr.append(el("td", null, refused || "–"));
      return tr;
    });
    $("tenants-count").textContent = `${tenants.length}`;
    fillRows("tenants", rows, "no principal submitted yet", 5);
  }

  function renderExclusions(exclusions) {
    const entries = Object.entries(exclusions).sort((a, b) => b[1] - a[1]);
    const most = entries.length ? entries[0][1] : 1;
    const rows = entries.map(([reason, n]) => {
      const tr = el("tr", { "data-reason": reason });
      tr.append(el("td", { class: "id" }, reason));
      tr.append(el("td", { class: "num" }, fmtNum(n)));
      const cell = el("td", { class: "bar-cell" });
      const bar = el("span", { class: "bar" });
      bar.style.width = `${Math.max(2, (100 * n) / most)}%`;
      cell.append(bar);
      tr.append(cell);
      return tr;
    });
    fillRows("exclusions", rows, "no node was ever skipped", 3);
  }

  function renderTiles(stats, instances) {
    const n = stats.nodes;
    $("tile-nodes").textContent = `${fmtNum(n.by_state.online)} / ${fmtNum(n.total)}`;
    $("tile-slots").textContent = `${fmtNum(n.used)} / ${fmtNum(n.capacity)}`;
    $("tile-queued").textContent = fmtNum(stats.jobs.queued);
    $("tile-running").textContent = fmtNum(stats.jobs.assigned + stats.jobs.running);
    $("tile-rate").textContent = fmtRate(stats.throughput.finished_per_s);
    $("tile-p50").textContent = fmtMs(stats.latency_ms.submit_to_done.p50);
    $("tile-p99").textContent = fmtMs(stats.latency_ms.submit_to_done.p99);
    $("tile-failed").textContent = `${fmtNum(stats.totals.failed)} / ${fmtNum(stats.totals.timed_out)}`;
    $("tile-instances").textContent = fmtNum(instances.instances.filter((i) => i.alive).length);
  }

  function render() {
    if (!lastData) return;
    const { stats, nodes, pools, instances, clients, tenants } = lastData;
    renderTiles(stats, instances);
    drawCharts(stats.now_ms);
    renderNodes(nodes.nodes, nodes.now_ms);
    renderPools(pools.pools);
    renderInstances(instances);
    renderClients(clients.clients, stats.now_ms);
    renderTenants(tenants.tenants);
    renderExclusions(stats.exclusions);
  }

  function setStatus(state, text) {
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text;
  }

  async function tick() {
    try {
      const [stats, nodes, pools, instances, clients, tenants] = await Promise.all([
        get("/api/v1/stats"), get("/api/v1/nodes"), get("/api/v1/pools"), get("/api/v1/instances"),
        get("/api/v1/clients"), get("/api/v1/tenants"),
      ]);
      record(stats);
      lastData = { stats, nodes, pools, instances, clients, tenants };
      render();
      setStatus("live", "live");
      $("updated").textContent = `updated ${new Date(stats.now_ms).toLocaleTimeString()} · every ${refreshMs / 1000} s`;
    } catch (error) {
      setStatus("error", token ? `error: ${error.message}` : "no token: open the URL the daemon logged (…/?token=…)");
    } finally {
      setTimeout(tick, refreshMs);
    }
  }

  $("filter").addEventListener("input", (event) => {
    filterText = event.target.value.trim().toLowerCase();
    render();
  });
  tick();
})();
