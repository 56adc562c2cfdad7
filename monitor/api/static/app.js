// expose dashboard: one tile per stream (state, smoothed-distance chart vs threshold, why it is
// suspect, health), the alert list with its explanation and acknowledge / close. Live data from
// /ws (resumes with ?since=SEQ after a reconnect); health and alerts from the REST API. No build
// step, no dependencies.
"use strict";

const POINTS = 120;  // windows kept per chart (2 min at one window per second)
const state = { token: null, lastSeq: null, streams: new Map(), ws: null, retry: 1000 };

function takeToken() {
  const url = new URL(location.href);
  const fromUrl = url.searchParams.get("token");
  if (fromUrl) {
    sessionStorage.setItem("expose-token", fromUrl);
    url.searchParams.delete("token");
    history.replaceState(null, "", url);  // keep the token out of the address bar and history
  }
  return sessionStorage.getItem("expose-token");
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), Authorization: `Bearer ${state.token}`,
    ...(opts.body ? { "Content-Type": "application/json" } : {}) } });
  if (r.status === 401) { logout(); throw new Error("unauthorized"); }
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).detail || r.statusText);
  return r.status === 204 ? null : r.json();
}

function logout() {
  sessionStorage.removeItem("expose-token");
  state.token = null;
  if (state.ws) state.ws.close();
  document.getElementById("main").hidden = true;
  document.getElementById("login").hidden = false;
}

// ---- stream tiles ----------------------------------------------------------------------
function tile(name) {
  let s = state.streams.get(name);
  if (s) return s;
  const el = document.createElement("div");
  el.className = "tile insufficient";
  el.dataset.stream = name;
  el.innerHTML = `<div class="head"><span><span class="name"></span> <span class="claimed"></span></span>
    <span class="state insufficient">insufficient</span></div>
    <canvas width="680" height="240"></canvas><div class="why"></div><div class="reason"></div><div class="health"></div>`;
  el.querySelector(".name").textContent = name;
  const tiles = document.getElementById("tiles");
  tiles.querySelector(".empty")?.remove();
  tiles.appendChild(el);
  s = { el, points: [], threshold: null, why: "" };
  state.streams.set(name, s);
  return s;
}

function setState(s, st) {
  s.el.className = `tile ${st}`;
  const b = s.el.querySelector(".state");
  b.className = `state ${st}`;
  b.textContent = st;
}

function onScore(m) {
  const s = tile(m.stream);
  s.points.push({ t: m.t1, d: m.distance, sm: m.smoothed, st: m.state });
  if (s.points.length > POINTS) s.points.shift();
  if (m.threshold !== null) s.threshold = m.threshold;
  if (m.profile) s.el.querySelector(".claimed").textContent = `as ${m.profile}`;
  setState(s, m.state);
  if (m.status === "scored") s.why = m.explanation || "";  // an insufficient window keeps the last one
  s.el.querySelector(".why").textContent = m.state === "suspect" || m.state === "alert" ? s.why : "";
  s.el.querySelector(".reason").textContent = m.distance === null ? m.reason
    : `distance ${m.distance.toFixed(3)} (z ${m.z === null ? "-" : m.z.toFixed(1)}), latency ${(m.latency_s * 1000).toFixed(0)} ms`;
  draw(s);
}

function draw(s) {
  const c = s.el.querySelector("canvas"), g = c.getContext("2d");
  const W = c.width, H = c.height, pad = 28;
  g.clearRect(0, 0, W, H);
  const vals = s.points.filter(p => p.d !== null).flatMap(p => [p.d, p.sm]);
  const thr = s.threshold;
  const all = vals.concat(thr !== null && isFinite(thr) && Math.abs(thr) < 1e6 ? [thr] : []);
  if (!all.length) { g.fillStyle = "#6e7681"; g.fillText("waiting for scored windows", pad, H / 2); return; }
  let lo = Math.min(...all), hi = Math.max(...all);
  if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
  const span = hi - lo; lo -= span * 0.1; hi += span * 0.1;
  const x = i => pad + (W - pad - 6) * (i / (POINTS - 1));
  const y = v => H - pad / 2 - (H - pad) * (v - lo) / (hi - lo);
  g.font = "18px system-ui"; g.fillStyle = "#8a94a3";
  g.fillText(hi.toFixed(2), 2, 16); g.fillText(lo.toFixed(2), 2, H - 4);
  s.points.forEach((p, i) => {  // insufficient windows as grey bars: no signal is not "genuine"
    if (p.d === null) { g.fillStyle = "#30363d"; g.fillRect(x(i) - 2, 0, 4, H); }
  });
  if (thr !== null && Math.abs(thr) < 1e6) {
    g.strokeStyle = "#f85149"; g.setLineDash([8, 6]); g.lineWidth = 2;
    g.beginPath(); g.moveTo(pad, y(thr)); g.lineTo(W, y(thr)); g.stroke(); g.setLineDash([]);
  }
  s.points.forEach((p, i) => {  // single windows: small grey dots
    if (p.d === null) return;
    g.fillStyle = "#6e7681"; g.beginPath(); g.arc(x(i), y(p.d), 2.5, 0, 2 * Math.PI); g.fill();
  });
  // the smoothed distance is what the threshold applies to
  g.strokeStyle = "#58a6ff"; g.lineWidth = 3; g.beginPath();
  let pen = false;
  s.points.forEach((p, i) => {
    if (p.sm === null) { pen = false; return; }
    if (pen) g.lineTo(x(i), y(p.sm)); else g.moveTo(x(i), y(p.sm));
    pen = true;
  });
  g.stroke();
  s.points.forEach((p, i) => {
    if (p.sm === null) return;
    g.fillStyle = { alert: "#f85149", suspect: "#d29922" }[p.st] || "#3fb950";
    g.beginPath(); g.arc(x(i), y(p.sm), 4, 0, 2 * Math.PI); g.fill();
  });
}

function fmtAge(a) { return a === null || a === undefined ? "-" : `${a.toFixed(1)} s`; }

async function refreshStreams() {
  let views;
  try { views = await api("/api/streams"); } catch { return; }
  const names = new Set(views.map(v => v.name));
  for (const [name, s] of state.streams) if (!names.has(name)) { s.el.remove(); state.streams.delete(name); }
  for (const v of views) {
    const s = tile(v.name);
    if (v.profile) s.el.querySelector(".claimed").textContent = `as ${v.profile}`;
    setState(s, v.state);
    const h = v.health, el = s.el.querySelector(".health");
    if (!h) { el.textContent = v.url ? "starting" : "waiting for a WHIP publisher"; continue; }
    const down = h.phase !== "live" || h.stalled;
    el.innerHTML = "";
    const items = [[`${h.kind}`, false], [h.phase + (h.stalled ? " (stalled)" : ""), down],
      [`${h.fps.toFixed(1)} fps`, false], [`last frame ${fmtAge(h.last_frame_age_s)}`, h.stalled],
      [`reconnects ${h.reconnects}`, h.reconnects > 0], [`dropped ${h.dropped_frames}`, h.dropped_frames > 0],
      [`windows ${h.windows}`, false]];
    if (h.behind) items.push(["falling behind", true]);
    for (const [text, bad] of items) {
      const sp = document.createElement("span"); sp.textContent = text; if (bad) sp.className = "bad"; el.appendChild(sp);
    }
    if (h.reason && down) s.el.querySelector(".reason").textContent = h.reason;
  }
}

// ---- alerts ----------------------------------------------------------------------------
async function refreshAlerts() {
  const status = document.getElementById("alert-filter").value;
  let alerts;
  try { alerts = await api(`/api/alerts?limit=100${status ? `&status=${status}` : ""}`); } catch { return; }
  const body = document.querySelector("#alerts tbody");
  body.innerHTML = "";
  if (!alerts.length) {
    body.innerHTML = `<tr><td colspan="9" class="empty">no ${status || ""} alert</td></tr>`;
    return;
  }
  for (const a of alerts) {
    const tr = document.createElement("tr");
    tr.className = a.status;
    tr.dataset.alert = a.id;
    const img = a.thumbnail_jpeg ? `<img alt="face" src="data:image/jpeg;base64,${a.thumbnail_jpeg}">` : "";
    const ep = `${a.t_start.toFixed(1)}–${a.t_end === null ? "now" : a.t_end.toFixed(1)} s`;
    tr.innerHTML = `<td>${img}</td><td>${new Date(a.opened_at * 1000).toLocaleTimeString()}</td><td></td><td></td>
      <td>${a.peak_distance.toFixed(3)} / ${a.mean_distance.toFixed(3)}</td><td class="why"></td><td>${ep}${a.active ? " (active)" : ""}</td>
      <td class="status"></td><td class="actions"></td>`;
    tr.children[2].textContent = a.stream;
    tr.children[3].textContent = a.profile;
    tr.querySelector(".why").textContent = a.explanation;
    tr.querySelector(".status").textContent = a.status === "open" ? "open"
      : a.status === "acknowledged" ? `ack by ${a.acknowledged_by}` : `closed by ${a.closed_by}: ${a.close_reason}`;
    const acts = tr.querySelector(".actions");
    if (a.status === "open") acts.appendChild(button("Acknowledge", "ack", () => act(a.id, "ack")));
    if (a.status !== "closed") acts.appendChild(button("Close", "close", () => act(a.id, "close")));
    body.appendChild(tr);
  }
}

function updateAlertRow(a) {  // per-window update of an active alert: peak / mean and why
  const tr = document.querySelector(`#alerts tr[data-alert="${a.id}"]`);
  if (!tr) { refreshAlerts(); return; }
  tr.children[4].textContent = `${a.peak_distance.toFixed(3)} / ${a.mean_distance.toFixed(3)}`;
  tr.querySelector(".why").textContent = a.explanation;
}

function button(label, cls, fn) {
  const b = document.createElement("button");
  b.textContent = label; b.className = cls; b.onclick = fn;
  return b;
}

async function act(id, what) {
  const by = localStorage.getItem("expose-operator") || prompt("Your name (recorded with the action)", "operator");
  if (!by) return;
  localStorage.setItem("expose-operator", by);
  const body = { by };
  if (what === "close") {
    const reason = prompt("Reason for closing", "false alarm");
    if (!reason) return;
    body.reason = reason;
  }
  try { await api(`/api/alerts/${id}/${what}`, { method: "POST", body: JSON.stringify(body) }); }
  catch (e) { alert(e.message); }
  refreshAlerts();
}

// ---- websocket -------------------------------------------------------------------------
function connect() {
  if (!state.token) return;
  const proto = location.protocol === "https:" ? "wss" : "ws";
  // first connection: the last few minutes fill the charts; later: resume where we left off
  const since = `&since=${state.lastSeq === null ? -2000 : state.lastSeq}`;
  const ws = new WebSocket(`${proto}://${location.host}/ws?token=${encodeURIComponent(state.token)}${since}`);
  state.ws = ws;
  const conn = document.getElementById("conn");
  ws.onopen = () => { conn.textContent = "live"; conn.className = "conn on"; state.retry = 1000; };
  ws.onmessage = ev => {
    const m = JSON.parse(ev.data);
    if (m.type !== "heartbeat" || state.lastSeq === null || m.seq > state.lastSeq) state.lastSeq = m.seq;
    if (m.type === "score") onScore(m);
    else if (m.type === "alert" && m.action === "updated") updateAlertRow(m.alert);
    else if (m.type === "alert") refreshAlerts();
    else if (m.type === "stream") refreshStreams();
    else if (m.type === "heartbeat") {
      for (const [name, st] of Object.entries(m.streams || {})) {
        const s = state.streams.get(name); if (s) setState(s, st);
      }
    }
  };
  ws.onclose = ev => {
    conn.textContent = "offline"; conn.className = "conn off";
    if (ev.code === 4401) { logout(); return; }
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 15000);
  };
}

function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
  refreshStreams(); refreshAlerts(); connect();
  setInterval(refreshStreams, 2000);
}

document.getElementById("login-form").onsubmit = ev => {
  ev.preventDefault();
  state.token = document.getElementById("token-input").value.trim();
  sessionStorage.setItem("expose-token", state.token);
  start();
};
document.getElementById("alert-filter").onchange = refreshAlerts;
state.token = takeToken();
if (state.token) start(); else document.getElementById("login").hidden = false;
