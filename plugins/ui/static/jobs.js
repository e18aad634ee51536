// The dashboard's jobs views: a table of jobs with filters (#jobs?state=failed&since=10m...,
// from /api/v1/jobs, a page at a time) and one job's detail (#job/<id>, from /api/v1/jobs/<id>):
// its facts, its attempts as a timeline and a table, its error. The view is body[data-view]
// (overview, jobs, job); the stylesheet shows the sections of the current one.
// Rules: as dashboard.js, data from the daemon is only written with textContent or as SVG
// attributes, and the token is sent as a bearer header. #job-actions carries the shown job's id
// and state in its data attributes (actions.js, when present, fills it); nothing else here acts.
(() => {
  "use strict";

  const FILTERS = ["state", "pool", "principal", "node", "since"];
  const { el, svg, get } = scheddUi;
  const $ = (id) => document.getElementById(id);
  let cursor = null; // the next page of the table shown, or null
  let filters = {};

  function stamp(ms) {
    if (!ms) return "–";
    const d = new Date(ms);
    const today = new Date().toDateString() === d.toDateString();
    return today ? d.toLocaleTimeString() : d.toLocaleString();
  }

  function span(ms) {
    if (ms === null || ms === undefined || ms < 0) return "–";
    if (ms < 1000) return `${Math.round(ms)} ms`;
    if (ms < 60000) return `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
    if (ms < 3600000) return `${(ms / 60000).toFixed(1)} min`;
    return `${(ms / 3600000).toFixed(1)} h`;
  }

  function bytes(n) {
    if (n < 1024) return `${n} B`;
    if (n < 1048576) return `${(n / 1024).toFixed(1)} KiB`;
    return `${(n / 1048576).toFixed(1)} MiB`;
  }

  function pill(state) {
    return el("span", { class: `pill ${state}` }, state);
  }

  // -- the jobs table --------------------------------------------------------------------------

  function readHashFilters(query) {
    const params = new URLSearchParams(query);
    const out = {};
    for (const name of FILTERS) {
      const value = (params.get(name) || "").trim();
      if (value) out[name] = value;
    }
    return out;
  }

  function showFilters() {
    for (const name of FILTERS) $(`f-${name}`).value = filters[name] || "";
  }

  function jobRow(job) {
    const tr = el("tr", { "data-job": job.job_id, "data-state": job.state });
    const idCell = el("td", { class: "id" });
    idCell.append(el("a", { href: `#job/${encodeURIComponent(job.job_id)}` }, job.job_id));
    const stateCell = el("td");
    stateCell.append(pill(job.state));
    const took = job.finished_ms ? job.finished_ms - job.submitted_ms : null;
    tr.append(idCell, stateCell, el("td", { class: "id" }, job.principal || "–"),
      el("td", { class: "id" }, job.node || "–"), el("td", { class: "pools" }, (job.pools || []).join(", ")),
      el("td", { class: "num" }, `${job.attempt}/${job.max_attempts}`), el("td", {}, stamp(job.submitted_ms)),
      el("td", { class: "num" }, span(took)), el("td", { class: "id" }, job.error || ""));
    return tr;
  }

  async function loadJobs(append) {
    const params = new URLSearchParams(filters);
    params.set("limit", "100");
    if (append && cursor) params.set("cursor", cursor);
    const body = $("jobs").querySelector("tbody");
    try {
      const page = await get(`/api/v1/jobs?${params}`);
      if (!append) body.replaceChildren();
      for (const job of page.jobs) body.append(jobRow(job));
      if (!body.children.length) {
        const tr = el("tr", { class: "empty-row" });
        tr.append(el("td", { colspan: "9" }, "no jobs match"));
        body.append(tr);
      }
      cursor = page.cursor;
      $("jobs-more").hidden = !cursor;
      $("jobs-count").textContent = `${body.querySelectorAll("tr[data-job]").length} shown${cursor ? ", more" : ""}`;
      $("jobs-error").textContent = "";
    } catch (error) {
      $("jobs-error").textContent = `error: ${error.message}`;
    }
    $("jobs").dataset.loaded = String(Date.now());
  }

  // -- one job -------------------------------------------------------------------------------

  function fact(name, value) {
    const tr = el("tr");
    tr.append(el("th", {}, name), el("td", {}, value));
    return tr;
  }

  const COLORS = { queued: "#d1d5db", assigned: "#93c5fd", running: "#2563eb", done: "#15803d",
    failed: "#b91c1c", rejected: "#b91c1c", lost: "#b45309", timed_out: "#b45309", canceled: "#6b7280" };

  function drawTimeline(job, now) {
    const chart = $("job-timeline");
    chart.replaceChildren();
    const t0 = job.timings.submitted;
    const attempts = job.attempts || [];
    const end = job.timings.finished || now;
    const rows = [{ label: "queue", from: t0, to: attempts.length ? attempts[0].assigned_ms : end, kind: "queued" }];
    attempts.forEach((a, i) => {
      const ended = a.ended_ms || end;
      if (a.accepted_ms) {
        rows.push({ label: `#${a.attempt} ${a.node}`, from: a.assigned_ms, to: a.accepted_ms, kind: "assigned" });
        rows[rows.length - 1].then = { from: a.accepted_ms, to: ended, kind: "running" };
      } else {
        rows.push({ label: `#${a.attempt} ${a.node}`, from: a.assigned_ms, to: ended, kind: "assigned" });
      }
      rows[rows.length - 1].outcome = a.outcome;
      const next = attempts[i + 1];
      if (next && next.assigned_ms > ended) rows.push({ label: "queue", from: ended, to: next.assigned_ms, kind: "queued" });
    });
    const W = 760, left = 130, right = 90, rowH = 20, top = 8;
    const H = top + rows.length * rowH + 22;
    chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const spanMs = Math.max(1, end - t0);
    const x = (t) => left + ((Math.min(Math.max(t, t0), end) - t0) / spanMs) * (W - left - right);
    for (let i = 0; i <= 4; i++) {
      const gx = left + (i / 4) * (W - left - right);
      chart.append(svg("line", { class: "grid", x1: gx, x2: gx, y1: top - 4, y2: H - 18 }));
      chart.append(svg("text", { class: "tick", x: gx, y: H - 6, "text-anchor": "middle" }, `+${span((i / 4) * spanMs)}`));
    }
    rows.forEach((row, i) => {
      const y = top + i * rowH;
      const g = svg("g", { "data-kind": row.kind, "data-outcome": row.outcome || "" });
      g.append(svg("text", { x: 6, y: y + 13 }, row.label));
      const bar = (seg) => svg("rect", { x: x(seg.from), y: y + 3, height: rowH - 7, rx: 2, fill: COLORS[seg.kind],
        width: Math.max(2, x(seg.to) - x(seg.from)) });
      g.append(bar(row));
      if (row.then) g.append(bar(row.then));
      const last = row.then || row;
      if (row.outcome) {
        g.append(svg("text", { x: Math.min(x(last.to) + 6, W - right + 6), y: y + 13, fill: COLORS[row.outcome] || "#1d2330" },
          row.outcome));
      }
      chart.append(g);
    });
  }

  function renderJob(job, now) {
    $("job-id").textContent = job.job_id;
    const state = $("job-state");
    state.className = `pill ${job.state}`;
    state.textContent = job.state;
    const actions = $("job-actions");
    actions.dataset.jobId = job.job_id;
    actions.dataset.jobState = job.state;
    const t = job.timings;
    const facts = $("job-facts").querySelector("tbody");
    facts.replaceChildren(
      fact("principal", job.principal || "–"), fact("pools", (job.pools || []).join(", ") || "–"),
      fact("priority", job.priority), fact("attempt", `${job.attempt} of ${job.max_attempts}`),
      fact("node", job.node || "–"), fact("tried", (job.tried || []).join(", ") || "–"),
      fact("session", job.session_id || "–"), fact("payload", bytes(job.payload_bytes)),
      fact("output", bytes(job.output_bytes)), fact("submitted", stamp(t.submitted)),
      fact("assigned", stamp(t.assigned)), fact("accepted", stamp(t.accepted)),
      fact("finished", stamp(t.finished)),
      fact("took", t.finished ? span(t.finished - t.submitted) : `${span(now - t.submitted)} so far`),
      fact("last retry", job.reason || "–"),
    );
    const body = $("job-attempts").querySelector("tbody");
    body.replaceChildren();
    for (const a of job.attempts || []) {
      const tr = el("tr", { "data-attempt": a.attempt, "data-outcome": a.outcome });
      const outcome = el("td");
      outcome.append(pill(a.outcome));
      tr.append(el("td", { class: "num" }, a.attempt), el("td", { class: "id" }, a.node || "–"), outcome,
        el("td", {}, stamp(a.assigned_ms)),
        el("td", { class: "num" }, a.accepted_ms ? span(a.accepted_ms - a.assigned_ms) : "–"),
        el("td", { class: "num" }, a.accepted_ms && a.ended_ms ? span(a.ended_ms - a.accepted_ms) : "–"),
        el("td", {}, a.reason || ""));
      body.append(tr);
    }
    if (!body.children.length) {
      const tr = el("tr", { class: "empty-row" });
      tr.append(el("td", { colspan: "7" }, "never assigned"));
      body.append(tr);
    }
    $("job-error").textContent = job.error ? `${job.error.code}: ${job.error.message || ""}` : "–";
    drawTimeline(job, now);
  }

  async function loadJob(jobId) {
    try {
      const body = await get(`/api/v1/jobs/${encodeURIComponent(jobId)}`);
      renderJob(body.job, Date.now());
      $("job-error-line").textContent = "";
    } catch (error) {
      $("job-error-line").textContent = `error: ${error.message}`;
    }
    $("job-view").dataset.loaded = jobId;
  }

  // -- routing -------------------------------------------------------------------------------

  function route() {
    const hash = location.hash.replace(/^#/, "");
    let view = "overview";
    if (hash.startsWith("job/")) {
      view = "job";
      loadJob(decodeURIComponent(hash.slice(4)));
    } else if (hash === "jobs" || hash.startsWith("jobs?")) {
      view = "jobs";
      filters = readHashFilters(hash.slice(5));
      $("job-back").setAttribute("href", `#${hash}`);
      showFilters();
      cursor = null;
      loadJobs(false);
    }
    document.body.dataset.view = view;
    for (const link of document.querySelectorAll("#views a")) {
      link.classList.toggle("current", link.dataset.view === (view === "job" ? "jobs" : view));
    }
  }

  $("job-filters").addEventListener("submit", (event) => {
    event.preventDefault();
    const chosen = {};
    for (const name of FILTERS) {
      const value = $(`f-${name}`).value.trim();
      if (value) chosen[name] = value;
    }
    const query = new URLSearchParams(chosen).toString();
    const target = `#jobs${query ? `?${query}` : ""}`;
    if (location.hash === target) route(); else location.hash = target;
  });
  $("jobs-more").addEventListener("click", () => loadJobs(true));
  window.addEventListener("hashchange", route);
  route();
})();
