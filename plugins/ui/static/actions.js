// Operator actions on the dashboard: drain / undrain buttons in the nodes table, and cancel /
// requeue buttons wherever the page has <div id="job-actions" data-job-id=".." data-job-state="..">.
// Rules: the admin token is asked for once (the field in the header) and kept in this tab's
// sessionStorage only; it is sent as a bearer header to POST /api/admin/... and nowhere else.
// Data from the daemon is only ever written with textContent. The page's own refresh shows
// what an action changed; the answer of each action is shown next to the token field.
(() => {
  "use strict";

  const KEY = "schedd-admin-token";
  const TERMINAL = new Set(["done", "failed", "canceled", "timed_out"]);
  const REQUEUED = new Set(["failed", "canceled", "timed_out"]);
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    if (attrs) for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  const adminToken = () => sessionStorage.getItem(KEY) || "";

  function say(text, state) {
    const out = $("admin-result");
    if (!out) return;
    out.textContent = text;
    out.dataset.state = state;
  }

  function showTokenState() {
    const on = Boolean(adminToken());
    $("admin-token").hidden = on;
    $("admin-save").hidden = on;
    $("admin-forget").hidden = !on;
    $("admin-state").textContent = on ? "admin actions on" : "";
  }

  function tokenField() {
    const header = document.querySelector("header");
    if (!header || $("admin")) return;
    const wrap = el("span", { id: "admin" });
    const input = el("input", {
      id: "admin-token", type: "password", placeholder: "admin token", "aria-label": "admin token",
      autocomplete: "off",
    });
    const save = el("button", { id: "admin-save", type: "button" }, "use");
    const forget = el("button", { id: "admin-forget", type: "button" }, "forget admin token");
    save.addEventListener("click", () => {
      if (!input.value.trim()) return;
      sessionStorage.setItem(KEY, input.value.trim());
      input.value = "";
      showTokenState();
      say("", "idle");
    });
    input.addEventListener("keydown", (event) => { if (event.key === "Enter") save.click(); });
    forget.addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      showTokenState();
    });
    wrap.append(input, save, forget, el("span", { id: "admin-state", class: "muted small" }),
      el("span", { id: "admin-result", class: "small", "data-state": "idle", role: "status" }));
    header.insertBefore(wrap, $("updated") || null);
    showTokenState();
  }

  async function act(path, label) {
    const token = adminToken();
    if (!token) {
      say(`${label}: enter the admin token first`, "error");
      $("admin-token").focus();
      return null;
    }
    say(`${label}…`, "busy");
    try {
      const response = await fetch(path, {
        method: "POST", cache: "no-store",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
        body: "{}",
      });
      const answer = await response.json();
      if (!response.ok) {
        say(`${label}: refused (${response.status}): ${answer.error.message}`, "error");
        return null;
      }
      const [first] = answer.results;
      say(first ? `${label}: ${first.outcome} (now ${first.state})` : `${label}: nothing matched`,
        "done");
      return answer;
    } catch (error) {
      say(`${label}: ${error.message}`, "error");
      return null;
    }
  }

  function button(text, title, onClick) {
    const b = el("button", { type: "button", class: "action", title }, text);
    b.addEventListener("click", async () => {
      b.disabled = true;
      try { await onClick(); } finally { b.disabled = false; }
    });
    return b;
  }

  // A button per node row: drain an online node, undrain a draining one.
  function decorateNodes() {
    for (const row of document.querySelectorAll("#nodes tbody tr[data-node]")) {
      if (row.querySelector("td.actions")) continue;
      const cell = el("td", { class: "actions" });
      const node = row.dataset.node;
      const path = (verb) => `/api/admin/nodes/${encodeURIComponent(node)}/${verb}`;
      if (row.dataset.state === "online") {
        cell.append(button("drain", `no new jobs for ${node}; its running jobs finish`,
          () => act(path("drain"), `drain ${node}`)));
      } else if (row.dataset.state === "draining") {
        cell.append(button("undrain", `${node} takes jobs again`,
          () => act(path("undrain"), `undrain ${node}`)));
      }
      row.append(cell);
    }
  }

  // Cancel and requeue for the job the page shows, by its state.
  function decorateJob() {
    const box = $("job-actions");
    if (!box) return;
    const job = box.dataset.jobId || "";
    const state = box.dataset.jobState || "";
    const key = `${job}|${state}`;
    if (box.dataset.rendered === key) return;
    box.dataset.rendered = key;
    box.replaceChildren();
    if (!job) return;
    const path = (verb) => `/api/admin/jobs/${encodeURIComponent(job)}/${verb}`;
    if (!TERMINAL.has(state)) {
      box.append(button("cancel", `cancel ${job}`, () => act(path("cancel"), `cancel ${job}`)));
    }
    if (REQUEUED.has(state)) {
      box.append(button("requeue", `run ${job} again`, () => act(path("requeue"), `requeue ${job}`)));
    }
  }

  function decorate() {
    decorateNodes();
    decorateJob();
  }

  tokenField();
  decorate();
  new MutationObserver(decorate).observe(document.body, {
    childList: true, subtree: true, attributes: true,
    attributeFilter: ["data-job-id", "data-job-state"],
  });
})();
