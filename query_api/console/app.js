// netwarden web console: vanilla JS over the query API, nothing fetched from elsewhere.
// Every call carries the token in the Authorization header; the live stream opens with a single-use stream
// ticket (POST /api/v1/stream-tickets) because a browser's WebSocket cannot send headers. What the role may
// do comes from GET /api/v1/me; the API refuses the rest anyway.
"use strict";

const TOKEN_KEY = "netwarden.token";
const $ = (sel, root = document) => root.querySelector(sel);
const state = { me: null, view: null, flows: [], cursor: null, socket: null, policy: null, whatIfText: null };

class ApiError extends Error {
  constructor(status, body) {
    super(typeof body?.detail === "string" ? body.detail : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, { method = "GET", body, contentType } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["Content-Type"] = contentType || "application/json";
  const res = await fetch(path, { method, headers, body });
  const text = await res.text();
  let data = text;
  if ((res.headers.get("content-type") || "").includes("json")) data = text ? JSON.parse(text) : null;
  if (!res.ok) {
    if (res.status === 401 && state.me) signOut("Your session ended (401): sign in again.");
    throw new ApiError(res.status, data);
  }
  return data;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  return node;
}

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function errorText(err) {
  if (!(err instanceof ApiError)) return String(err);
  const d = err.body?.detail;
  if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).join(" › ")}: ${e.msg}`).join("\n");
  return `${err.status}: ${err.message}${err.body?.needed ? ` (needs ${err.body.needed})` : ""}`;
}

// ---- sign in ---------------------------------------------------------------------------------------------

async function signIn(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
  try {
    state.me = await api("/api/v1/me");
  } catch (err) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.me = null;
    $("#signin-error").textContent = err.status === 401 ? "That token was refused." : errorText(err);
    return;
  }
  $("#signin-error").textContent = "";
  $("#nav").hidden = false;
  $("#signout").hidden = false;
  $("#signin").hidden = true;
  const roles = state.me.bindings.map((b) => (b.scope ? `${b.role} of ${b.scope}` : b.role)).join(", ");
  $("#who").textContent = `${state.me.name} — ${roles || "no roles"}`;
  document.body.classList.toggle("may-write", state.me.may_write_policies);
  for (const node of document.querySelectorAll(".write")) node.hidden = !state.me.may_write_policies;
  route();
}

function signOut(message = "") {
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  stopFollow();
  for (const v of document.querySelectorAll(".view")) v.hidden = true;
  $("#signin").hidden = false;
  $("#nav").hidden = true;
  $("#signout").hidden = true;
  $("#who").textContent = "";
  $("#signin-error").textContent = message;
}

// ---- routing: #view?query ---------------------------------------------------------------------------------

function route() {
  if (!state.me) return;
  const [name, query] = (location.hash.slice(1) || "flows").split("?");
  const view = ["flows", "map", "policies", "clusters", "report"].includes(name) ? name : "flows";
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${view}`;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.view === view);
  if (view !== "flows") stopFollow();
  state.view = view;
  const params = new URLSearchParams(query || "");
  ({ flows: showFlows, map: showMap, policies: showPolicies, clusters: showClusters, report: () => {} })[view](params);
}

// ---- flows -------------------------------------------------------------------------------------------------

const FILTERS = ["cluster", "namespace", "pod", "workload", "verdict", "protocol", "port", "since"];

async function fillNamespaces() {
  const select = $("#flow-filters [name=namespace]");
  if (select.options.length > 1) return;
  const [{ namespaces }, { clusters }] = await Promise.all([api("/api/v1/namespaces"), api("/api/v1/clusters")]);
  for (const ns of [...new Set(namespaces.map((n) => n.namespace))].sort()) select.append(el("option", {}, ns));
  for (const c of clusters) $("#flow-filters [name=cluster]").append(el("option", {}, c.name));
}

async function showFlows(params) {
  const form = $("#flow-filters");
  await fillNamespaces().catch((err) => ($("#flows-error").textContent = errorText(err)));
  for (const name of FILTERS) {
    const field = form.elements[name];
    const value = params.get(name) || "";
    if (field.tagName === "SELECT" && value && ![...field.options].some((o) => o.value === value)) {
      field.append(el("option", {}, value));
    }
    field.value = value;
  }
  await loadFlows(false);
}

function filterQuery() {
  const form = $("#flow-filters");
  const q = new URLSearchParams();
  for (const name of FILTERS) {
    const value = form.elements[name].value.trim();
    if (value) q.set(name, value);
  }
  return q;
}

async function loadFlows(more) {
  const q = filterQuery();
  q.set("limit", "100");
  if (more && state.cursor) q.set("cursor", state.cursor);
  $("#flows-error").textContent = "";
  $("#flow-status").textContent = "loading…";
  try {
    const page = await api(`/api/v1/flows?${q}`);
    state.flows = more ? state.flows.concat(page.flows) : page.flows;
    state.cursor = page.next_cursor;
    renderFlows();
    $("#flow-status").textContent = `${state.flows.length} flows, newest first`;
    // A counter of finished loads: scripts (and the browser tests) wait on it, not on timing.
    const table = $("#flows-table");
    table.dataset.loads = String(Number(table.dataset.loads || 0) + 1);
  } catch (err) {
    $("#flow-status").textContent = "";
    $("#flows-error").textContent = errorText(err);
  }
  $("#flows-more").hidden = !state.cursor;
}

function renderFlows() {
  const body = $("#flows-table tbody");
  body.replaceChildren(...state.flows.map(flowRow));
}

function endpointLabel(ep, ip) {
  ep = ep || {};
  const reserved = (ep.labels || []).find((l) => l.startsWith("reserved:"));
  if (ep.pod_name) return el("span", {}, `${ep.namespace}/${ep.pod_name}`);
  if (ep.namespace && !(ep.labels || []).length && !ip) {
    // Outside the caller's scope: the API keeps only cluster and namespace; show the namespace, never "N/A".
    return el("span", { class: "redacted", title: "peer outside your scope: only its namespace is shown" },
      `${ep.namespace} (redacted)`);
  }
  const workload = ep.workloads?.[0]?.name;
  if (ep.namespace) return el("span", {}, `${ep.namespace}/${workload || ip || "?"}`);
  if (reserved) return el("span", {}, ip ? `${ip} (${reserved.slice(9)})` : reserved);
  return el("span", ip ? {} : { class: "redacted" }, ip || "(redacted)");
}

function l4Of(flow) {
  const l4 = flow.l4 || {};
  const proto = Object.keys(l4)[0];
  if (!proto) return { proto: "", sport: 0, dport: 0 };
  const p = l4[proto];
  return { proto, sport: p.source_port || 0, dport: p.destination_port || p.type || 0 };
}

function hubbleAttribution(flow) {
  const names = (list) => (list || []).map((p) => `${p.kind || "policy"} ${p.namespace ? p.namespace + "/" : ""}${p.name}`);
  const parts = [];
  const denied = [...names(flow.ingress_denied_by), ...names(flow.egress_denied_by)];
  const allowed = [...names(flow.ingress_allowed_by), ...names(flow.egress_allowed_by)];
  if (flow.drop_reason_desc) parts.push(flow.drop_reason_desc);
  if (denied.length) parts.push(`denied by ${denied.join(", ")}`);
  if (allowed.length) parts.push(`allowed by ${allowed.join(", ")}`);
  return parts.join("; ");
}

function netwardenAttribution(set) {
  if (!set) return "";
  return ["egress", "ingress"].filter((d) => set[d]).map((d) => {
    const s = set[d];
    return `${d} ${s.verdict}${s.policy ? ` by ${s.policy}${s.rule ? ` (${s.rule})` : ""}` : ""}`;
  }).join("; ");
}

function flowRow(obj) {
  const f = obj.flow || {};
  const nw = obj.netwarden || {};
  const { proto, dport } = l4Of(f);
  const cluster = f.source?.cluster_name || f.destination?.cluster_name || (f.node_name || "").split("/")[0];
  const desired = nw.desired;
  const row = el("tr", { class: nw.verdict_mismatch ? "mismatch" : "", onclick: () => openWhy(obj) },
    el("td", { title: f.time }, (f.time || "").replace("T", " ").slice(0, 23)),
    el("td", {}, cluster),
    el("td", {}, endpointLabel(f.source, f.IP?.source)),
    el("td", {}, f.is_reply ? "<-" : "->"),
    el("td", {}, endpointLabel(f.destination, f.IP?.destination)),
    el("td", {}, proto ? `${dport}/${proto}` : ""),
    el("td", { class: `v v-${f.verdict}` }, f.verdict),
    el("td", { class: "attr" }, hubbleAttribution(f)),
    el("td", { class: desired ? `v v-${desired.verdict}` : "attr" }, desired ? desired.verdict : "not evaluated"),
    el("td", { class: "attr" }, netwardenAttribution(desired)));
  row.dataset.verdict = f.verdict || "";
  return row;
}

// Live follow: a ticket per connection; rows arrive as jsonpb GetFlowsResponse text, newest on top.
async function startFollow() {
  stopFollow(false);
  $("#flow-status").textContent = "connecting…";
  let ticket;
  try {
    ticket = (await api("/api/v1/stream-tickets", { method: "POST" })).ticket;
  } catch (err) {
    $("#flows-error").textContent = errorText(err);
    $("#follow").checked = false;
    return;
  }
  const q = filterQuery();
  q.delete("since");
  q.set("ticket", ticket);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/api/v1/flows/stream?${q}`);
  state.socket = socket;
  let received = 0;
  socket.onopen = () => ($("#flow-status").textContent = "following live");
  socket.onmessage = (event) => {
    const msg = JSON.parse(event.data);
    if (msg.missed !== undefined) {
      $("#flow-status").textContent = `following live (${msg.missed} flows skipped: too fast)`;
      return;
    }
    received += 1;
    state.flows.unshift(msg);
    if (state.flows.length > 1000) state.flows.length = 1000;
    $("#flows-table tbody").prepend(flowRow(msg));
    $("#flow-status").textContent = `following live: ${received} new`;
  };
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    $("#follow").checked = false;
    $("#flow-status").textContent = event.reason ? `live stream ended: ${event.reason}` : "live stream ended";
  };
}

function stopFollow(uncheck = true) {
  const socket = state.socket;
  state.socket = null;
  if (socket) socket.close();
  if (uncheck) $("#follow").checked = false;
}

// ---- why ---------------------------------------------------------------------------------------------------

function peerOf(ep, ip) {
  ep = ep || {};
  if (ep.pod_name) return `${ep.namespace}/${ep.pod_name}`;
  if (ep.namespace && ep.workloads?.[0]) return `${ep.namespace}/${ep.workloads[0].name}`;
  return ip || null;
}

async function openWhy(obj) {
  const f = obj.flow || {};
  const { proto, sport, dport } = l4Of(f);
  // A reply travels server -> client: ask about the request it answers.
  const [client, server, port] = f.is_reply
    ? [peerOf(f.destination, f.IP?.destination), peerOf(f.source, f.IP?.source), sport]
    : [peerOf(f.source, f.IP?.source), peerOf(f.destination, f.IP?.destination), dport];
  const cluster = f.source?.cluster_name || f.destination?.cluster_name || (f.node_name || "").split("/")[0];
  const panel = $("#why");
  const body = $("#why-body");
  panel.hidden = false;
  body.replaceChildren(el("p", { class: "status" }, "asking why…"));
  if (!client || !server) {
    body.replaceChildren(el("p", {}, "One side of this flow is outside your scope (redacted): there is no pair to explain."),
      flowFacts(f));
    return;
  }
  const q = new URLSearchParams({ cluster, from: client, to: server, protocol: (proto || "TCP").toUpperCase() });
  if (port) q.set("port", String(port));
  try {
    const why = await api(`/api/v1/why?${q}`);
    body.replaceChildren(renderWhy(why), flowFacts(f));
  } catch (err) {
    body.replaceChildren(el("p", { class: "error" }, errorText(err)), flowFacts(f));
  }
}

function flowFacts(f) {
  return el("details", {}, el("summary", {}, "the flow (Hubble jsonpb)"), el("pre", { class: "yaml" }, JSON.stringify(f, null, 2)));
}

function decision(title, set) {
  if (!set) return el("p", {}, `${title}: none`);
  const dirs = ["egress", "ingress"].filter((d) => set[d]).map((d) => {
    const s = set[d];
    const who = s.netwarden_policy ? ` — netwarden policy ${s.netwarden_policy} v${s.version} rule ${s.netwarden_rule}` : "";
    return el("li", {}, `${d}: `, el("span", { class: `v v-${s.verdict}` }, s.verdict),
      s.policy ? ` by ${s.policy} ${s.rule || ""}` : "", who);
  });
  return el("div", {}, el("h3", {}, title, ": ", el("span", { class: `v v-${set.verdict}` }, set.verdict),
    set.drop_reason ? ` (${set.drop_reason})` : ""), el("ul", {}, dirs));
}

function renderWhy(why) {
  const q = why.query || {};
  const observed = why.observed || {};
  const seen = (observed.by_verdict || []).map((v) => el("li", {},
    el("span", { class: `v v-${v.verdict}` }, v.verdict), v.drop_reason ? ` ${v.drop_reason}` : "",
    ` at ${v.observed_at}: ${v.flows} flows`,
    (v.hubble_denied_by || []).length ? ` — denied by ${v.hubble_denied_by.join(", ")}` : "",
    (v.hubble_allowed_by || []).length ? ` — allowed by ${v.hubble_allowed_by.join(", ")}` : ""));
  const out = el("div", { id: "why-result" },
    el("p", {}, el("strong", {}, `${q.from} -> ${q.to} ${q.port ?? ""}/${q.protocol} on ${q.cluster}`)),
    el("h3", {}, `What Hubble saw (${observed.flows || 0} flows)`), el("ul", {}, seen),
    decision("Desired policy set now", why.desired), decision("Staged set", why.staged));
  const fix = why.fix || why.fixes;
  if (fix) out.append(el("h3", {}, "Smallest fix"), el("pre", { class: "yaml" }, JSON.stringify(fix, null, 2)));
  const writers = why.writers || why.who_may_write;
  if (writers) out.append(el("p", {}, `May write it: ${JSON.stringify(writers)}`));
  return out;
}

// ---- service map -------------------------------------------------------------------------------------------

async function showMap(params) {
  const form = $("#map-filters");
  if (params.get("since")) form.elements.since.value = params.get("since");
  $("#map-error").textContent = "";
  let summary;
  try {
    const select = form.elements.cluster;
    if (select.options.length <= 1) {
      const { clusters } = await api("/api/v1/clusters");
      select.replaceChildren(...clusters.map((c) => el("option", {}, c.name)), el("option", { value: "" }, "all clusters"));
    }
    if (params.get("cluster") !== null) select.value = params.get("cluster");
    const q = new URLSearchParams({ since: form.elements.since.value || "1h", max_edges: "200" });
    if (select.value) q.set("cluster", select.value);
    summary = await api(`/api/v1/flows/summary?${q}`);
  } catch (err) {
    $("#map-error").textContent = errorText(err);
    return;
  }
  drawMap(summary.edges);
}

function nodeKey(ep) {
  return `${ep.cluster}|${ep.namespace}|${ep.workload}`;
}

function nodeName(ep) {
  if (ep.workload) return ep.workload;
  return ep.namespace ? "(redacted)" : "(unknown)";
}

function drawMap(edges) {
  const canvas = $("#map-canvas");
  if (!edges.length) {
    canvas.replaceChildren(el("p", { class: "status" }, "No traffic in this window."));
    return;
  }
  // Layout: one column per (cluster, namespace), its workloads stacked; edges as curves between them.
  const groups = new Map();
  for (const e of edges) {
    for (const ep of [e.source, e.destination]) {
      const g = `${ep.cluster}|${ep.namespace}`;
      if (!groups.has(g)) groups.set(g, new Map());
      groups.get(g).set(nodeKey(ep), ep);
    }
  }
  const colW = 250, rowH = 44, top = 40, nodeW = 150, nodeH = 26;
  // Clients to the left of their servers: columns ordered by flows sent minus flows received.
  const balance = new Map([...groups.keys()].map((g) => [g, 0]));
  for (const e of edges) {
    balance.set(`${e.source.cluster}|${e.source.namespace}`, balance.get(`${e.source.cluster}|${e.source.namespace}`) + e.flows);
    balance.set(`${e.destination.cluster}|${e.destination.namespace}`, balance.get(`${e.destination.cluster}|${e.destination.namespace}`) - e.flows);
  }
  const sorted = [...groups.keys()].sort((a, b) => balance.get(b) - balance.get(a) || a.localeCompare(b));
  const pos = new Map();
  let maxRows = 0;
  const layer = svg("g");
  sorted.forEach((g, i) => {
    const nodes = [...groups.get(g).values()].sort((a, b) => nodeName(a).localeCompare(nodeName(b)));
    maxRows = Math.max(maxRows, nodes.length);
    const x = 20 + i * colW;
    const [cluster, ns] = g.split("|");
    layer.append(svg("g", { class: "ns" }, svg("rect", { x: x - 8, y: top - 26, width: nodeW + 16, height: nodes.length * rowH + 30, rx: 6 }),
      svg("text", { x, y: top - 10 }, `${ns || "(reserved)"} · ${cluster}`)));
    nodes.forEach((ep, j) => {
      const y = top + j * rowH;
      pos.set(nodeKey(ep), { x, y, col: i });
      layer.append(svg("g", { class: "node", "data-node": nodeKey(ep) }, svg("rect", { x, y, width: nodeW, height: nodeH, rx: 4 }),
        svg("text", { x: x + 6, y: y + 17 }, nodeName(ep).slice(0, 22))));
    });
  });
  const bottom = top + maxRows * rowH + 10;
  const maxFlows = Math.max(...edges.map((e) => e.flows));
  const edgeLayer = svg("g"), labelLayer = svg("g");
  for (const e of edges) {
    const a = pos.get(nodeKey(e.source)), b = pos.get(nodeKey(e.destination));
    const drops = (e.verdicts.DROPPED || 0) + (e.verdicts.ERROR || 0);
    let p;  // cubic Bézier: start, two control points, end
    if (a.col === b.col) {  // within a namespace: an arc on the column's right
      const x = a.x + nodeW, bulge = 30 + 8 * Math.abs(a.y - b.y) / rowH;
      p = [[x, a.y + 9], [x + bulge, a.y + 9], [x + bulge, b.y + 17], [x, b.y + 17]];
    } else if (a.col < b.col) {  // left to right
      p = [[a.x + nodeW, a.y + nodeH / 2], [a.x + nodeW + 70, a.y + nodeH / 2], [b.x - 70, b.y + nodeH / 2], [b.x, b.y + nodeH / 2]];
    } else {  // right to left: under the columns
      const low = bottom + 20 + 6 * (a.col - b.col);
      p = [[a.x + nodeW / 2, a.y + nodeH], [a.x + nodeW / 2, low], [b.x + nodeW / 2, low], [b.x + nodeW / 2, b.y + nodeH]];
    }
    const d = `M${p[0]} C${p[1]} ${p[2]} ${p[3]}`;
    // The curve's midpoint (t = 1/2) carries the port: a target easier to hit than a thin stroke.
    const mx = (p[0][0] + 3 * p[1][0] + 3 * p[2][0] + p[3][0]) / 8, my = (p[0][1] + 3 * p[1][1] + 3 * p[2][1] + p[3][1]) / 8;
    const width = 1 + 7 * Math.log1p(e.flows) / Math.log1p(maxFlows);
    const label = `${e.source.namespace}/${nodeName(e.source)} -> ${e.destination.namespace}/${nodeName(e.destination)} `
      + `${e.port}/${e.protocol}: ${e.flows} flows${drops ? `, ${drops} dropped` : ""}`;
    edgeLayer.append(svg("path", { class: drops ? "edge drop" : "edge", d, "stroke-width": width.toFixed(1),
      "data-edge": label, onclick: () => edgeFlows(e, drops) }, svg("title", {}, label)));
    labelLayer.append(svg("text", { class: drops ? "edge-label drop" : "edge-label", x: mx, y: my + 4, "text-anchor": "middle",
      "data-edge": label, onclick: () => edgeFlows(e, drops) }, svg("title", {}, label), `${e.port}/${e.protocol}`));
  }
  const width = 40 + sorted.length * colW, height = bottom + 40 + 6 * sorted.length;
  canvas.replaceChildren(svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" }, edgeLayer, layer, labelLayer));
}

function edgeFlows(e, drops) {
  const q = new URLSearchParams();
  // The server side names the edge; the source may be redacted (only its namespace known).
  if (e.destination.namespace) q.set("namespace", e.destination.namespace);
  if (e.destination.workload && !e.destination.workload.startsWith("reserved:")) q.set("workload", e.destination.workload);
  if (e.port) q.set("port", String(e.port));
  if (e.protocol) q.set("protocol", e.protocol.toLowerCase());
  if (drops) q.set("verdict", "DROPPED");
  if (e.destination.cluster) q.set("cluster", e.destination.cluster);
  q.set("since", $("#map-filters").elements.since.value || "1h");
  location.hash = `flows?${q}`;
}

// ---- policies ----------------------------------------------------------------------------------------------

// Block-style YAML of JSON data (what the API returns); strings quoted whenever YAML could misread them.
function toYaml(value, indent = "") {
  const scalar = (v) => {
    if (v === null) return "null";
    if (typeof v !== "string") return String(v);
    return /^[A-Za-z_][\w./-]*$/.test(v) && !/^(true|false|null|yes|no|on|off|y|n|~)$/i.test(v) ? v : JSON.stringify(v);
  };
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return value.map((v) => {
      if (v && typeof v === "object" && Object.keys(v).length) {
        return `${indent}- ${toYaml(v, indent + "  ").trimStart()}`;
      }
      return `${indent}- ${toYaml(v, indent + "  ")}`;
    }).join("\n");
  }
  if (value && typeof value === "object") {
    const keys = Object.keys(value);
    if (!keys.length) return "{}";
    return keys.map((k) => {
      const v = value[k];
      const nested = v && typeof v === "object" && (Array.isArray(v) ? v.length : Object.keys(v).length);
      return nested ? `${indent}${scalar(k)}:\n${toYaml(v, indent + "  ")}` : `${indent}${scalar(k)}: ${toYaml(v, indent + "  ")}`;
    }).join("\n");
  }
  return scalar(value);
}

function policyYaml(doc) {
  const { status, ...rest } = doc;
  return toYaml(rest) + "\n";
}

async function showPolicies(params) {
  const body = $("#policies-table tbody");
  try {
    const [{ policies }, writes] = await Promise.all([api("/api/v1/policies"),
      state.me.may_write_policies ? api("/api/v1/me/policies") : { policies: {} }]);
    state.policyWrites = writes.policies;
    body.replaceChildren(...policies.map((p) => el("tr", { "data-policy": p.name, onclick: () => openPolicy(p) },
      el("td", {}, p.name), el("td", {}, p.scope), el("td", {}, p.mode),
      el("td", {}, p.enforced ? `v${p.enforced.version}` : ""), el("td", {}, p.staged ? `v${p.staged.version}` : ""))));
    const wanted = params.get("name") && policies.find((p) => p.name === params.get("name"));
    if (wanted) openPolicy(wanted);
  } catch (err) {
    body.replaceChildren(el("tr", {}, el("td", { colspan: 5, class: "error" }, errorText(err))));
  }
}

async function openPolicy(p) {
  state.policy = p;
  closeEditor();
  $("#policy-detail").hidden = false;
  $("#policy-name").textContent = `${p.name} (${p.scope}, ${p.mode})`;
  // Edit and promote only where the engine's rules let this caller write the policy (GET /api/v1/me/policies).
  const writable = state.me.may_write_policies && (state.policyWrites?.[p.name] ?? true);
  $("#policy-edit").hidden = !writable;
  $("#policy-promote").hidden = !(writable && p.staged);
  const { versions } = await api(`/api/v1/policies/${encodeURIComponent(p.name)}/versions`);
  state.versions = versions;
  const options = versions.slice().reverse().map((v) => el("option", { value: v.version }, `v${v.version} ${v.mode} · ${v.createdAt} · ${v.createdBy}`));
  $("#policy-version").replaceChildren(...options);
  $("#policy-diff-base").replaceChildren(el("option", { value: "" }, "(none)"), ...options.map((o) => o.cloneNode(true)));
  await showVersion();
}

function versionDoc(v) {
  return { apiVersion: "netwarden.io/v1", kind: "Policy", metadata: { name: state.policy.name },
    spec: { ...v.spec, ...(v.mode === "staged" ? { mode: "staged" } : {}) } };
}

async function showVersion() {
  const v = state.versions.find((x) => String(x.version) === $("#policy-version").value);
  $("#policy-yaml").textContent = policyYaml(versionDoc(v));
  const baseNo = $("#policy-diff-base").value;
  const pre = $("#policy-diff");
  pre.hidden = !baseNo;
  if (baseNo) {
    const base = state.versions.find((x) => String(x.version) === baseNo);
    pre.replaceChildren(...lineDiff(policyYaml(versionDoc(base)), policyYaml(versionDoc(v))));
  }
}

// Line diff (longest common subsequence): policies are short documents.
function lineDiff(a, b) {
  const x = a.split("\n"), y = b.split("\n");
  const n = x.length, m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Array(m + 1).fill(0));
  for (let i = n - 1; i >= 0; i--) for (let j = m - 1; j >= 0; j--) {
    lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && x[i] === y[j]) { out.push(el("span", {}, `  ${x[i]}\n`)); i++; j++; }
    else if (j < m && (i >= n || lcs[i][j + 1] >= lcs[i + 1][j])) { out.push(el("span", { class: "add" }, `+ ${y[j]}\n`)); j++; }
    else { out.push(el("span", { class: "del" }, `- ${x[i]}\n`)); i++; }
  }
  return out;
}

function openEditor(text) {
  $("#policy-editor").hidden = false;
  $("#policy-text").value = text;
  state.whatIfText = null;
  $("#policy-errors").replaceChildren();
  $("#whatif-result").replaceChildren();
  editorChanged();
}

function closeEditor() {
  $("#policy-editor").hidden = true;
  $("#policy-errors").replaceChildren();
  $("#whatif-result").replaceChildren();
  $("#policy-status").textContent = "";
}

// Saving needs a what-if of exactly the text being saved.
function editorChanged() {
  const ready = state.whatIfText !== null && state.whatIfText === $("#policy-text").value;
  $("#policy-save").disabled = !ready;
  $("#policy-stage").disabled = !ready;
}

// The schema's errors (422 {"detail": [{"loc", "msg"}]}) beside the text, with the line of the field named.
function showErrors(err) {
  const list = $("#policy-errors");
  let detail = err instanceof ApiError && err.status === 422 ? err.body?.detail : null;
  // What-if answers a schema error as one string: "request body: document 1 (Policy p): spec.scope: ...".
  if (typeof detail === "string") {
    const named = detail.match(/\): ([\w.[\]-]+): /);
    detail = [{ loc: named ? [named[1]] : [], msg: detail }];
  }
  if (!Array.isArray(detail)) {
    list.replaceChildren(el("li", {}, errorText(err)));
    return;
  }
  const lines = $("#policy-text").value.split("\n");
  list.replaceChildren(...detail.map((e) => {
    const field = String((e.loc || []).at(-1) || "").split(".").at(-1).replace(/\[\d+\]$/, "");
    const at = field ? lines.findIndex((l) => l.trimStart().replace(/^- /, "").startsWith(`${field}:`)) : -1;
    return el("li", { class: "schema-error" }, at >= 0 ? el("code", {}, `line ${at + 1}`) : "", at >= 0 ? " " : "",
      `${(e.loc || []).filter((x) => x !== "body").join(" › ")}: ${e.msg}`);
  }));
}

async function whatIf() {
  const text = $("#policy-text").value;
  $("#policy-errors").replaceChildren();
  $("#whatif-result").replaceChildren(el("p", { class: "status" }, "replaying history…"));
  const q = new URLSearchParams({ since: $("#whatif-since").value || "7d" });
  try {
    const result = await api(`/api/v1/policies/what-if?${q}`, { method: "POST", body: text, contentType: "application/yaml" });
    state.whatIfText = text;
    $("#whatif-result").replaceChildren(renderWhatIf(result));
  } catch (err) {
    state.whatIfText = null;
    $("#whatif-result").replaceChildren();
    showErrors(err);
  }
  editorChanged();
}

function renderWhatIf(result) {
  const clusters = result.clusters || [];
  const conv = (c) => el("li", {}, `${c.source.namespace}/${c.source.workload || "?"} -> ${c.destination.namespace}/${c.destination.workload || "?"} `
    + `${c.port}/${c.protocol}: ${c.flows} flows`);
  const denied = clusters.reduce((n, c) => n + c.newly_denied.length, 0);
  return el("div", { id: "whatif-summary" },
    el("p", { class: denied ? "error" : "" }, clusters.length
      ? `What-if: ${denied} observed conversation(s) would become denied, `
        + `${clusters.reduce((n, c) => n + c.newly_allowed.length, 0)} newly allowed.`
      : "What-if: no cluster's desired set changes."),
    ...clusters.map((c) => el("div", {}, el("h4", {}, c.cluster),
      c.newly_denied.length ? el("div", {}, "Newly denied:", el("ul", {}, c.newly_denied.map(conv))) : "",
      c.newly_allowed.length ? el("div", {}, "Newly allowed:", el("ul", {}, c.newly_allowed.map(conv))) : "")));
}

async function savePolicy(stage) {
  const text = $("#policy-text").value;
  const name = state.policy?.name;
  $("#policy-errors").replaceChildren();
  try {
    let message;
    if (stage) {
      await api("/api/v1/policies/stage", { method: "POST", body: text, contentType: "application/yaml" });
      message = "staged";
    } else if (name) {
      const r = await api(`/api/v1/policies/${encodeURIComponent(name)}`, { method: "PUT", body: text, contentType: "application/yaml" });
      message = `saved: version ${r.version} (${r.result})`;
    } else {
      await api("/api/v1/apply", { method: "POST", body: text, contentType: "application/yaml" });
      message = "applied";
    }
    $("#policy-status").textContent = message;
    const keep = name;
    await showPolicies(new URLSearchParams(keep ? { name: keep } : {}));
    $("#policy-status").textContent = message;
  } catch (err) {
    showErrors(err);
  }
}

async function promote() {
  try {
    await api(`/api/v1/policies/${encodeURIComponent(state.policy.name)}/promote`, { method: "POST" });
    await showPolicies(new URLSearchParams({ name: state.policy.name }));
  } catch (err) {
    $("#policy-status").textContent = errorText(err);
  }
}

// ---- blueprints and clusters -------------------------------------------------------------------------------

async function showClusters() {
  const fill = async (sel, path, row) => {
    const body = $(`${sel} tbody`);
    try {
      const { documents } = await api(path);
      body.replaceChildren(...documents.map(row));
    } catch (err) {
      body.replaceChildren(el("tr", {}, el("td", { colspan: 6, class: "error" }, errorText(err))));
    }
  };
  await Promise.all([
    fill("#blueprints-table", "/api/v1/blueprints", (d) => el("tr", {}, el("td", {}, d.metadata.name),
      el("td", {}, d.status?.version ? `v${d.status.version}` : ""), el("td", {}, (d.spec.clusterPolicies || []).join(", ")))),
    fill("#assignments-table", "/api/v1/documents/assignments", (d) => el("tr", {}, el("td", {}, d.metadata.name),
      el("td", {}, d.spec.policy || d.spec.blueprint || ""),
      el("td", {}, (d.spec.targets || []).map((t) => [t.cluster, t.namespace || t.workspace].filter(Boolean).join("/")).join(", ")))),
    fill("#clusters-table", "/api/v1/documents/clusters", (d) => {
      const row = el("tr", { "data-cluster": d.metadata.name }, el("td", {}, d.metadata.name),
        el("td", {}, d.status?.engine || ""), el("td", {}, d.status?.blueprint ? `${d.status.blueprint} v${d.status.blueprintVersion}` : ""),
        el("td", { class: "sync" }, "checking…"), el("td", { class: "drift" }), el("td", { class: "pods" }));
      syncStatus(d.metadata.name, row);
      return row;
    }),
  ]);
}

async function syncStatus(name, row) {
  try {
    const s = await api(`/api/v1/clusters/${encodeURIComponent(name)}/sync`);
    $(".sync", row).textContent = s.error ? `${s.status}: ${s.error}` : s.status;
    $(".sync", row).className = `sync v ${s.status === "in-sync" ? "v-FORWARDED" : "v-DROPPED"}`;
    $(".drift", row).replaceChildren(el("ul", {}, (s.drift || []).map((d) => el("li", {}, `${d.object}: ${d.drift}`))));
    $(".pods", row).replaceChildren(el("ul", {}, (s.unmanaged_pods || []).map((p) => el("li", {}, p))));
  } catch (err) {
    $(".sync", row).textContent = errorText(err);
  }
}

// ---- validation report: fetched with the header, shown sandboxed (the page has no script anyway) ----------

async function reportBlobUrl() {
  const res = await fetch("/api/v1/reports/validation?format=html", {
    headers: { Authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` },
  });
  if (!res.ok) throw new ApiError(res.status, await res.json().catch(() => null));
  return URL.createObjectURL(new Blob([await res.text()], { type: "text/html" }));
}

// ---- wiring ------------------------------------------------------------------------------------------------

function wire() {
  $("#signin-form").addEventListener("submit", (e) => {
    e.preventDefault();
    signIn($("#token").value.trim());
  });
  $("#signout").addEventListener("click", () => signOut());
  window.addEventListener("hashchange", route);
  $("#flow-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = filterQuery();
    const hash = `flows?${q}`;
    if (location.hash.slice(1) === hash) loadFlows(false);
    else location.hash = hash;
    if (state.socket) startFollow();
  });
  $("#follow").addEventListener("change", (e) => (e.target.checked ? startFollow() : stopFollow()));
  $("#flows-more").addEventListener("click", () => loadFlows(true));
  $("#why-close").addEventListener("click", () => ($("#why").hidden = true));
  $("#map-filters").addEventListener("submit", (e) => {
    e.preventDefault();
    showMap(new URLSearchParams());
  });
  $("#policy-version").addEventListener("change", showVersion);
  $("#policy-diff-base").addEventListener("change", showVersion);
  $("#policy-edit").addEventListener("click", () => openEditor(policyYaml(versionDoc(
    state.versions.find((x) => String(x.version) === $("#policy-version").value)))));
  $("#policy-new").addEventListener("click", () => {
    state.policy = null;
    $("#policy-detail").hidden = false;
    $("#policy-name").textContent = "new policy";
    $("#policy-yaml").textContent = "";
    $("#policy-diff").hidden = true;
    openEditor("apiVersion: netwarden.io/v1\nkind: Policy\nmetadata:\n  name: my-policy\nspec:\n  scope: namespace\n  rules: []\n");
  });
  $("#policy-text").addEventListener("input", editorChanged);
  $("#policy-whatif").addEventListener("click", whatIf);
  $("#policy-save").addEventListener("click", () => savePolicy(false));
  $("#policy-stage").addEventListener("click", () => savePolicy(true));
  $("#policy-cancel").addEventListener("click", closeEditor);
  $("#policy-promote").addEventListener("click", promote);
  $("#report-load").addEventListener("click", async () => {
    $("#report-error").textContent = "";
    try {
      $("#report-frame").src = await reportBlobUrl();
    } catch (err) {
      $("#report-error").textContent = errorText(err);
    }
  });
  $("#report-open").addEventListener("click", async () => {
    try {
      window.open(await reportBlobUrl(), "_blank", "noopener");
    } catch (err) {
      $("#report-error").textContent = errorText(err);
    }
  });
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) signIn(token);
}

wire();
