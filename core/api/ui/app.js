// The millpond dashboard: plain browser JavaScript, no build step, no CDN.
// Everything comes from the worker's API; the bearer token (if the API has one) is kept in
// sessionStorage and sent as an Authorization header on every call.
"use strict";

const POLL_MS = 1000;
const COLORS = ["#2563eb", "#7c3aed", "#15803d", "#b45309", "#db2777", "#0891b2", "#65a30d", "#dc2626"];
const SVG = "http://www.w3.org/2000/svg";

const state = { samples: [], connectors: {}, info: {}, lastTime: null, offsetsOf: null, dryBody: null };

function $(id) { return document.getElementById(id); }

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

// -- the API -------------------------------------------------------------------------

class ApiError extends Error {}

async function api(method, path, body) {
  const headers = {};
  const token = sessionStorage.getItem("millpond-token");
  if (token) headers["Authorization"] = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  const data = text ? JSON.parse(text) : null;
  if (!resp.ok) throw new ApiError(`${method} ${path}: ${resp.status} ${(data && data.message) || resp.statusText}`);
  return data;
}

function showConn(ok, message) {
  const c = $("conn");
  c.textContent = message;
  c.style.color = ok ? "" : "#fca5a5";
}

// -- formatting ----------------------------------------------------------------------

function fmtRate(r) {
  if (r === null || r === undefined) return "-";  // no rate yet: not "0/s"
  return r >= 100 ? Math.round(r).toLocaleString("en") : r.toFixed(1);
}

function fmtCount(n) {
  if (n >= 1e7) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return String(n);
}

function fmtBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

// Keys, values and header values come as base64 (the shape POST /topics/{t}/records takes):
// shown as text when they are UTF-8, else as base64.
function fmtData(b64) {
  if (b64 === null || b64 === undefined) return "null";
  const bytes = Uint8Array.from(atob(b64), ch => ch.charCodeAt(0));
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch (e) {
    return "base64:" + b64;
  }
}

// -- polling -------------------------------------------------------------------------

async function poll() {
  try {
    if (!state.root) {
      state.root = await api("GET", "/");
      $("pipeline").textContent = state.root.pipeline || "";
      $("worker").textContent = "worker " + state.root.worker_id + " · " + state.root.version;
    }
    const since = state.lastTime === null ? "" : "?since=" + state.lastTime;
    const history = await api("GET", "/history" + since);
    for (const s of history.samples) state.samples.push(s);
    const horizon = Date.now() / 1000 - 300;
    while (state.samples.length && state.samples[0].time < horizon) state.samples.shift();
    if (state.samples.length) state.lastTime = state.samples[state.samples.length - 1].time;
    const expanded = await api("GET", "/connectors?expand=status&expand=info");
    const changed = JSON.stringify(Object.keys(expanded)) !== JSON.stringify(Object.keys(state.info));
    state.info = Object.fromEntries(Object.entries(expanded).map(([n, v]) => [n, v.info]));
    state.connectors = Object.fromEntries(Object.entries(expanded).map(([n, v]) => [n, v.status]));
    if (changed) await loadTopics();
    render();
    showConn(true, "live · " + new Date().toLocaleTimeString());
  } catch (e) {
    showConn(false, e instanceof ApiError && e.message.includes(" 401 ") ? "the API wants a token" : String(e.message || e));
  }
}

function latest() { return state.samples.length ? state.samples[state.samples.length - 1] : null; }

function render() {
  renderConnectors();
  renderGraph();
  renderRateChart();
  renderLagChart();
}

// -- connectors ----------------------------------------------------------------------

// Rows are made once per connector and updated in place: a redraw every second must not take a
// button away from under the pointer (or from a test's click).
function connectorRow(name) {
  const tbody = $("connectors").querySelector("tbody");
  let tr = tbody.querySelector(`tr[data-connector="${CSS.escape(name)}"]`);
  if (tr) return tr;
  const actions = el("td", { class: "actions" });
  for (const [action, label] of [["pause", "Pause"], ["resume", "Resume"], ["restart", "Restart"], ["offsets", "Offsets…"]]) {
    actions.append(el("button", { "data-action": action, "data-connector": name, text: label }));
  }
  tr = el("tr", { "data-connector": name }, el("td", { text: name }), el("td", { class: "type" }),
    el("td", { class: "state" }), el("td", { class: "tasks" }), el("td", { class: "num rate-in" }),
    el("td", { class: "num rate-out" }), el("td", { class: "num records-out" }), el("td", { class: "num errors" }),
    el("td", { class: "num dead-letters" }), el("td", { class: "num restarts" }), actions);
  tbody.append(tr);
  return tr;
}

function renderConnectors() {
  const sample = latest();
  const names = Object.keys(state.connectors);
  for (const tr of $("connectors").querySelectorAll("tbody tr")) {
    if (!names.includes(tr.dataset.connector)) tr.remove();
  }
  for (const name of names) {
    const status = state.connectors[name];
    const c = (sample && sample.connectors[name]) || {};
    const st = status.connector.state;
    const tr = connectorRow(name);
    const set = (css, text) => { tr.querySelector(css).textContent = text; };
    set(".type", status.type);
    set(".state", st);
    tr.querySelector(".state").className = "state state-" + st;
    const failed = status.tasks.find(t => t.trace);
    tr.querySelector(".state").title = failed ? failed.trace : "";
    set(".tasks", status.tasks.map(t => t.state).join(", "));
    set(".rate-in", fmtRate(c.rate_in));
    set(".rate-out", fmtRate(c.rate_out));
    set(".records-out", c.records_out === undefined ? "-" : fmtCount(c.records_out));
    set(".errors", c.errors ?? "-");
    set(".dead-letters", c.dead_letters ?? "-");
    set(".restarts", c.restarts ?? "-");
    tr.querySelector("button[data-action=pause]").disabled = st !== "RUNNING";
    tr.querySelector("button[data-action=resume]").disabled = st === "RUNNING";
  }
}

async function connectorAction(name, action) {
  const msg = $("action-message");
  if (action === "offsets") return openOffsets(name);
  const [method, path] = { pause: ["PUT", "pause"], resume: ["PUT", "resume"],
                           restart: ["POST", "restart?includeTasks=true"] }[action];
  msg.textContent = `${action} ${name}…`;
  try {
    await api(method, `/connectors/${encodeURIComponent(name)}/${path}`);
    msg.textContent = `${action} ${name}: done`;
  } catch (e) {
    msg.textContent = e.message;
  }
  await poll();
}

// -- the pipeline graph: sources -> topics -> sinks ---------------------------------------

function renderGraph() {
  const svg = $("graph");
  const width = svg.clientWidth || 900;
  const sources = [], sinks = [], topics = new Set(), edges = [];
  for (const [name, info] of Object.entries(state.info)) {
    const cfg = info.config || {};
    const dlq = cfg.errors && cfg.errors.topic;
    if (info.type === "source") {
      sources.push(name);
      if (cfg.topic) { topics.add(cfg.topic); edges.push([name, "t:" + cfg.topic, ""]); }
    } else {
      sinks.push(name);
      for (const t of cfg.topics || []) { topics.add(t); edges.push(["t:" + t, name, ""]); }
    }
    if (dlq) { topics.add(dlq); edges.push([name, "t:" + dlq, "dlq"]); }
  }
  const columns = [sources, [...topics].map(t => "t:" + t), sinks];
  const rows = Math.max(1, ...columns.map(c => c.length));
  const height = Math.max(120, rows * 60 + 20);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.style.height = height + "px";
  const nodeW = 170, nodeH = 42, pos = {};
  columns.forEach((col, ci) => {
    const x = 20 + ci * (width - nodeW - 40) / 2;
    col.forEach((id, ri) => { pos[id] = { x, y: (height - col.length * 60) / 2 + ri * 60 + 9 }; });
  });
  const sample = latest();
  const children = [el("svg:defs", {}, el("svg:marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
    markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" }, el("svg:path", { d: "M0,0 L10,5 L0,10 z", fill: "#94a3b8" })))];
  for (const [a, b, kind] of edges) {
    const p = pos[a], q = pos[b];
    const x1 = p.x + nodeW, y1 = p.y + nodeH / 2, x2 = q.x, y2 = q.y + nodeH / 2, mx = (x1 + x2) / 2;
    children.push(el("svg:path", { class: "edge " + kind, d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}` }));
  }
  for (const [id, p] of Object.entries(pos)) {
    const isTopic = id.startsWith("t:");
    const name = isTopic ? id.slice(2) : id;
    let sub = "", cls = "node ";
    if (isTopic) {
      const t = sample && sample.topics[name];
      sub = t ? `${t.partitions} partitions · ${fmtBytes(t.size_bytes)}` : "topic";
      cls += "topic";
    } else {
      const c = sample && sample.connectors[name];
      const st = state.connectors[name] ? state.connectors[name].connector.state : "";
      sub = `${st} · ${fmtRate(c ? c.rate_out : null)}/s`;
      cls += state.info[name].type;
    }
    children.push(el("svg:g", { class: cls, transform: `translate(${p.x},${p.y})`, "data-node": id },
      el("svg:rect", { width: nodeW, height: nodeH }),
      el("svg:text", { x: 8, y: 17, text: name }),
      el("svg:text", { x: 8, y: 33, class: "sub", text: sub })));
  }
  svg.replaceChildren(...children);
}

// -- charts (own SVG line charts over the last five minutes) ---------------------------------

function lineChart(svg, legend, series) {
  const w = svg.clientWidth || 500, h = svg.clientHeight || 160, left = 44, bottom = 16;
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  const now = Date.now() / 1000, t0 = now - 300;
  let max = 1;
  for (const s of series) for (const [, v] of s.points) if (v !== null) max = Math.max(max, v);
  const x = t => left + (t - t0) / 300 * (w - left - 4);
  const y = v => h - bottom - v / max * (h - bottom - 8);
  const nodes = [
    el("svg:line", { class: "axis", x1: left, y1: h - bottom, x2: w, y2: h - bottom }),
    el("svg:line", { class: "axis", x1: left, y1: 8, x2: left, y2: h - bottom }),
    el("svg:text", { x: 2, y: 14, text: fmtCount(Math.round(max)) }),
    el("svg:text", { x: 2, y: h - bottom, text: "0" }),
    el("svg:text", { x: left, y: h - 2, text: "-5 min" }),
    el("svg:text", { x: w - 30, y: h - 2, text: "now" }),
  ];
  const keys = [];
  series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    const pts = s.points.filter(([t, v]) => v !== null && t >= t0).map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`);
    nodes.push(el("svg:polyline", { points: pts.join(" "), stroke: color, "data-series": s.name }));
    const last = s.points.length ? s.points[s.points.length - 1][1] : null;
    keys.push(el("span", {}, el("i", { style: "background:" + color }), `${s.name} ${s.fmt(last)}`));
  });
  svg.replaceChildren(...nodes);
  legend.replaceChildren(...keys);
}

function renderRateChart() {
  const names = Object.keys(state.connectors);
  const series = names.map(n => ({ name: n, fmt: v => fmtRate(v) + "/s",
    points: state.samples.filter(s => s.connectors[n]).map(s => [s.time, s.connectors[n].rate_out]) }));
  lineChart($("rate-chart"), $("rate-legend"), series);
}

function renderLagChart() {
  const groups = [...new Set(state.samples.flatMap(s => s.lag.map(g => g.group)))];
  const series = groups.map(g => ({ name: g, fmt: v => v === null ? "-" : fmtCount(v),
    points: state.samples.map(s => [s.time, s.lag.filter(x => x.group === g).reduce((a, x) => a + x.lag, 0)]) }));
  lineChart($("lag-chart"), $("lag-legend"), series);
}

// -- offsets: the dry run first, then apply ------------------------------------------------

async function openOffsets(name) {
  state.offsetsOf = name;
  state.dryBody = null;
  $("offsets").hidden = false;
  $("offsets-name").textContent = name;
  $("offsets-result").textContent = "";
  $("offsets-apply").disabled = $("offsets-reset-apply").disabled = true;
  try {
    const current = await api("GET", `/connectors/${encodeURIComponent(name)}/offsets`);
    $("offsets-body").value = JSON.stringify(current, null, 2);
  } catch (e) {
    $("offsets-result").textContent = e.message;
  }
  $("offsets").scrollIntoView();
}

async function offsetsCall(method, dryRun) {
  const name = state.offsetsOf, out = $("offsets-result");
  let body;
  if (method === "PATCH") {
    try { body = JSON.parse($("offsets-body").value); } catch (e) { out.textContent = "not JSON: " + e.message; return; }
  }
  const path = `/connectors/${encodeURIComponent(name)}/offsets` + (dryRun ? "?dry_run=true" : "");
  try {
    const answer = await api(method, path, body);
    out.textContent = (dryRun ? "Dry run (nothing changed):\n" : "Applied:\n") + JSON.stringify(answer, null, 2);
    state.dryBody = dryRun ? method + ":" + $("offsets-body").value : null;
  } catch (e) {
    out.textContent = e.message;
    state.dryBody = null;
  }
  updateApply();
}

function updateApply() {
  $("offsets-apply").disabled = state.dryBody !== "PATCH:" + $("offsets-body").value;
  $("offsets-reset-apply").disabled = state.dryBody === null || !state.dryBody.startsWith("DELETE:");
}

// -- the topic browser ----------------------------------------------------------------------

async function loadTopics() {
  const topics = await api("GET", "/topics?all=true");
  state.topics = Object.fromEntries(topics.map(t => [t.name, t.partitions]));
  const select = $("b-topic"), chosen = select.value;
  select.replaceChildren(...topics.map(t => el("option", { value: t.name, text: t.name })));
  if (chosen && state.topics[chosen]) select.value = chosen;
  else { const mine = topics.find(t => !t.name.startsWith("__")); if (mine) select.value = mine.name; }
  fillPartitions();
}

function fillPartitions() {
  const parts = state.topics[$("b-topic").value] || [];
  $("b-partition").replaceChildren(...parts.map(p => el("option", { value: p.partition, text: p.partition })));
}

async function browse(ev) {
  ev.preventDefault();
  const topic = $("b-topic").value, partition = $("b-partition").value;
  if (!topic) return;
  const params = new URLSearchParams({ limit: $("b-limit").value || "20" });
  if (document.querySelector("input[name=b-from]:checked").value === "time" && $("b-time").value) {
    params.set("timestamp", String(Date.parse($("b-time").value + "Z")));
  } else if ($("b-offset").value !== "") {
    params.set("offset", $("b-offset").value);
  }
  try {
    const answer = await api("GET", `/topics/${encodeURIComponent(topic)}/partitions/${partition}/records?${params}`);
    $("b-info").textContent = `offsets ${answer.log_start_offset}…${answer.log_end_offset}; ` +
      `${answer.records.length} records from ${answer.start}`;
    $("records").querySelector("tbody").replaceChildren(...answer.records.map(r => el("tr", {},
      el("td", { class: "num", text: r.offset }),
      el("td", { text: r.timestamp === null ? "-" : new Date(r.timestamp).toISOString() }),
      el("td", { text: fmtData(r.key) }),
      el("td", { text: r.headers.map(([name, value]) => name + "=" + fmtData(value)).join(", ") }),
      el("td", { text: fmtData(r.value) }))));
  } catch (e) {
    $("b-info").textContent = e.message;
  }
}

// -- wiring -------------------------------------------------------------------------------

function main() {
  $("token").value = sessionStorage.getItem("millpond-token") || "";
  $("token-form").addEventListener("submit", ev => {
    ev.preventDefault();
    const t = $("token").value.trim();
    if (t) sessionStorage.setItem("millpond-token", t); else sessionStorage.removeItem("millpond-token");
    state.root = null;
    poll();
  });
  $("connectors").addEventListener("click", ev => {
    const b = ev.target.closest("button[data-action]");
    if (b) connectorAction(b.dataset.connector, b.dataset.action);
  });
  $("offsets-dry").addEventListener("click", () => offsetsCall("PATCH", true));
  $("offsets-apply").addEventListener("click", () => offsetsCall("PATCH", false));
  $("offsets-reset-dry").addEventListener("click", () => offsetsCall("DELETE", true));
  $("offsets-reset-apply").addEventListener("click", () => offsetsCall("DELETE", false));
  $("offsets-close").addEventListener("click", () => { $("offsets").hidden = true; });
  $("offsets-body").addEventListener("input", updateApply);
  $("b-topic").addEventListener("change", fillPartitions);
  $("browse").addEventListener("submit", browse);
  poll();
  setInterval(poll, POLL_MS);
}

main();
