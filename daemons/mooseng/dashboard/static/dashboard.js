// MooseNG dashboard: polls /api/status and /api/history and redraws. No framework; every value
// goes in through textContent, so nothing a daemon reports can inject markup.
"use strict";

const POLL_MS = 2000;
const STATE_ORDER = ["stable", "overgoal", "undergoal", "endangered", "missing", "deleting"];

function $(id) { return document.getElementById(id); }

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, cls) {
  const tr = el("tr", null, cls);
  for (const c of cells) tr.appendChild(c instanceof Node ? c : el("td", c));
  return tr;
}

function num(v) { return el("td", v === null || v === undefined ? "–" : v, "num"); }

function stateCell(state) { return el("td", state, "state-" + String(state).split(":")[0]); }

function human(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i || (n > 0 && n < 10 && n % 1) ? n.toFixed(1) : Math.round(n)) + " " + units[i];
}

function bar(used, total) {
  const td = el("td"), outer = el("div", null, "bar"), inner = el("div");
  const pct = total > 0 ? Math.min(100, 100 * used / total) : 0;
  inner.style.width = pct.toFixed(1) + "%";
  outer.title = pct.toFixed(1) + "% used";
  outer.appendChild(inner);
  td.appendChild(outer);
  return td;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function renderMasters(masters) {
  fill($("masters").tBodies[0], masters.map(m => {
    const raft = m.raft || {};
    const tr = row([
      m.endpoint, m.node_id || "–", stateCell(m.role),
      num(m.term), num(m.commit), num(m.applied), num(m.lag),
      el("td", raft.available ? "ok" : "unavailable" + (raft.reason ? ": " + raft.reason : ""), "note"),
    ], "master");
    tr.dataset.endpoint = m.endpoint;
    tr.dataset.role = m.role;
    return tr;
  }));
}

function renderChunkservers(servers) {
  const rows = [];
  for (const s of servers) {
    const tr = row([num(s.server_id), s.address, stateCell(s.state), num(s.chunks),
                    human(s.used_bytes), human(s.total_bytes), bar(s.used_bytes, s.total_bytes),
                    s.last_heartbeat_s.toFixed(1) + " s ago"], "server");
    tr.dataset.serverId = s.server_id;
    tr.dataset.state = s.state;
    rows.push(tr);
    for (const d of s.disks) {
      rows.push(row(["", "disk " + d.index + ": " + d.path, stateCell(d.state), num(d.chunks),
                     human(d.used_bytes), human(d.total_bytes), bar(d.used_bytes, d.total_bytes), ""], "disk"));
    }
  }
  fill($("chunkservers").tBodies[0], rows);
}

function renderChunkStates(chunks) {
  const byClass = chunks.by_class || {};
  const seen = new Set();
  for (const states of Object.values(byClass)) for (const s of Object.keys(states)) seen.add(s);
  const states = STATE_ORDER.filter(s => seen.has(s)).concat([...seen].filter(s => !STATE_ORDER.includes(s)).sort());
  const head = row([el("th", "Class"), ...states.map(s => el("th", s)), el("th", "Total")]);
  $("chunk-states").tHead.replaceChildren(head);
  const rows = Object.keys(byClass).sort().map(name => {
    const counts = byClass[name];
    const total = states.reduce((a, s) => a + (counts[s] || 0), 0);
    const tr = row([name, ...states.map(s => {
      const td = num(counts[s] || 0);
      if (counts[s] && s !== "stable") td.classList.add("state-" + s);
      return td;
    }), num(total)], "sclass");
    tr.dataset.sclass = name;
    return tr;
  });
  fill($("chunk-states").tBodies[0], rows);
}

function renderClasses(classes) {
  const tbody = $("classes").tBodies[0];
  if (!Array.isArray(classes)) {
    fill(tbody, [row([el("td", "unavailable: " + (classes.reason || ""), "note")])]);
    return;
  }
  fill(tbody, classes.map(c => row([c.name, num(c.goal), c.description, c.tier, c.builtin ? "yes" : "no"])));
}

function renderLinks(links) {
  for (const name of ["prometheus", "grafana"]) {
    const a = $("link-" + name);
    a.hidden = !links[name];
    if (links[name]) a.href = links[name];
  }
}

function render(st) {
  const alive = st.chunkservers.filter(s => s.state === "alive").length;
  const leader = st.masters.find(m => m.role === "leader");
  $("count-masters").textContent = st.masters.length;
  $("leader").textContent = leader ? (leader.node_id || leader.endpoint) : "none";
  $("count-chunkservers-alive").textContent = alive;
  $("count-chunkservers-down").textContent = st.chunkservers.length - alive;
  $("count-chunks").textContent = st.chunks.total;
  $("space").textContent = st.space ? human(st.space.used_bytes) + " / " + human(st.space.total_bytes) : "–";
  const badge = $("cluster-state");
  const healthy = st.cluster.available && leader && alive === st.chunkservers.length;
  badge.textContent = !st.cluster.available ? "unreachable" : healthy ? "healthy" : "degraded";
  badge.className = "badge " + (healthy ? "ok" : "bad");
  $("updated").textContent = "sampled " + new Date(st.sampled_at * 1000).toLocaleTimeString();
  const r = st.rates;
  $("rates").textContent = r.available
    ? `now: read ${human(r.bytes_read_per_s)}/s, written ${human(r.bytes_written_per_s)}/s, ${r.ops_per_s.toFixed(1)} metadata ops/s (from ${r.source})`
    : "rates unavailable: " + r.reason;
  renderMasters(st.masters);
  renderChunkservers(st.chunkservers);
  renderChunkStates(st.chunks);
  renderClasses(st.classes);
  renderLinks(st.links);
  const err = $("error");
  err.hidden = st.cluster.available;
  if (!st.cluster.available) err.textContent = "Cluster unavailable: " + st.cluster.reason;
}

// A line chart of several series on a canvas: [{label, color, values}] over the points' times.
function chart(canvas, points, series, format) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 70, bottom = 20, top = 18;
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px sans-serif";
  let max = 0;
  for (const s of series) for (const p of points) max = Math.max(max, p[s.key] || 0);
  max = max > 0 ? max * 1.1 : 1;
  ctx.strokeStyle = "#e3e7eb"; ctx.fillStyle = "#5b6673";
  for (let i = 0; i <= 4; i++) {
    const y = top + (h - top - bottom) * i / 4;
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w - 5, y); ctx.stroke();
    ctx.fillText(format(max * (4 - i) / 4), 2, y + 4);
  }
  if (points.length > 1) {
    const t0 = points[0].t, span = Math.max(points[points.length - 1].t - t0, 1);
    ctx.fillText(Math.round(span) + " s", w - 40, h - 4);
    for (const s of series) {
      ctx.strokeStyle = s.color; ctx.lineWidth = 2; ctx.beginPath();
      points.forEach((p, i) => {
        const x = left + (w - left - 5) * (p.t - t0) / span;
        const y = top + (h - top - bottom) * (1 - (p[s.key] || 0) / max);
        if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
    }
  } else {
    ctx.fillText("collecting samples…", left + 10, h / 2);
  }
  series.forEach((s, i) => { ctx.fillStyle = s.color; ctx.fillText(s.label, left + 10 + 90 * i, 12); });
}

function renderHistory(hist) {
  chart($("chart-throughput"), hist.points, [
    {key: "bytes_read_per_s", label: "read", color: "#2e8540"},
    {key: "bytes_written_per_s", label: "written", color: "#3b82c4"},
  ], v => human(v) + "/s");
  chart($("chart-ops"), hist.points, [{key: "ops_per_s", label: "ops/s", color: "#c47f00"}], v => v.toFixed(1));
}

async function getJSON(url) {
  const reply = await fetch(url, {cache: "no-store"});
  const body = await reply.json();
  if (!reply.ok) throw new Error(body.error || reply.statusText);
  return body;
}

async function poll() {
  try {
    const [st, hist] = await Promise.all([getJSON("/api/status"), getJSON("/api/history")]);
    render(st);
    renderHistory(hist);
    document.body.dataset.loaded = "true";
  } catch (e) {
    const err = $("error");
    err.hidden = false;
    err.textContent = "Dashboard API unreachable: " + e.message;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
