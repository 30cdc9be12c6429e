// heldout's participant page: reads and writes only through the REST API (/api/v1).
"use strict";
const api = "/api/v1";
const $ = (id) => document.getElementById(id);
const state = { challenge: null, phase: null, timer: null };

function token() { return localStorage.getItem("heldout-token") || ""; }

async function call(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}`, ...(options.headers || {}) };
  const resp = await fetch(api + path, { ...options, headers });
  const body = resp.status === 204 ? null : await resp.json();
  if (!resp.ok) {
    let text = body && body.detail ? body.detail : `HTTP ${resp.status}`;
    if (body && body.field) text += ` (field: ${body.field})`;
    if (body && body.rule) text += ` [rule: ${body.rule}]`;
    throw new Error(text);
  }
  return body;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(3));

async function login(event) {
  if (event) event.preventDefault();
  const typed = $("token").value.trim();
  if (typed) localStorage.setItem("heldout-token", typed);
  try {
    const me = await call("/me");
    $("me").textContent = `signed in as ${me.username}`;
    await showChallenges();
  } catch (err) {
    $("me").textContent = err.message;
  }
}

async function showChallenges() {
  const nav = $("challenges");
  nav.replaceChildren();
  for (const c of await call("/challenges")) {
    const b = document.createElement("button");
    b.textContent = c.title;
    b.onclick = () => showChallenge(c.slug);
    nav.append(b);
  }
}

async function showChallenge(slug) {
  const c = await call(`/challenges/${slug}`);
  state.challenge = c;
  $("challenge").hidden = false;
  $("challenge-title").textContent = c.title;
  $("challenge-description").textContent = c.description;
  const tabs = $("phases");
  tabs.replaceChildren();
  for (const p of c.phases) {
    const b = document.createElement("button");
    b.role = "tab";
    b.textContent = `${p.title} (${p.kind === "algorithm" ? "T2 image" : "T3 codebase"})`;
    b.onclick = () => { for (const o of tabs.children) o.ariaSelected = "false"; b.ariaSelected = "true"; showPhase(p); };
    tabs.append(b);
  }
  if (c.phases.length) tabs.children[0].click();
}

async function showPhase(phase) {
  state.phase = phase;
  $("phase").hidden = false;
  $("phase-title").textContent = phase.title;
  $("rules").replaceChildren(...phase.rules_text.map((t) => { const li = document.createElement("li"); li.textContent = t; return li; }));
  for (const div of document.querySelectorAll("#submit-form [data-kind]")) div.hidden = div.dataset.kind !== phase.kind;
  $("message").textContent = "";
  clearInterval(state.timer);
  await refresh();
  state.timer = setInterval(refresh, 3000);
}

async function refresh() {
  const { challenge, phase } = state;
  if (!challenge || !phase) return;
  const base = `/challenges/${challenge.slug}/phases/${phase.slug}`;
  const [board, subs] = await Promise.all([call(`${base}/leaderboard`), call(`${base}/submissions`)]);
  renderBoard(board);
  renderSubmissions(subs);
}

function renderBoard(board) {
  const others = board.metrics.filter((m) => !m.primary).map((m) => m.name);
  const head = $("leaderboard").tHead;
  head.replaceChildren();
  const hr = head.insertRow();
  // A phase holding back private cases ranks on its public part until it closes.
  const primary = board.part ? `${board.primary_metric} (${board.part} part)` : board.primary_metric;
  for (const h of ["rank", "team", primary, "95% CI", ...others]) cell(hr, h);
  const body = $("leaderboard").tBodies[0];
  body.replaceChildren();
  for (const e of board.entries) {
    const r = body.insertRow();
    const rank = cell(r, e.rank === null ? "–" : String(e.rank), "num");
    if (e.unranked_reason) rank.title = e.unranked_reason;
    cell(r, e.team);
    cell(r, fmt(e.value), "num");
    cell(r, `[${fmt(e.ci[0])}, ${fmt(e.ci[1])}]`, "num");
    for (const n of others) cell(r, fmt((e.metrics[n] || {}).value), "num");
  }
  if (!board.entries.length) cell(body.insertRow(), "no scored submissions yet");
  const ens = board.ensemble;
  $("ensemble").textContent = ens ? `Ensemble of ${ens.teams.join(", ")}: ${fmt(ens.value)} [${fmt(ens.ci[0])}, ${fmt(ens.ci[1])}]${ens.reason ? ` (${ens.reason})` : ""}` : "";
}

function renderSubmissions(subs) {
  const body = $("submissions").tBodies[0];
  body.replaceChildren();
  for (const s of subs.slice().reverse()) {
    const r = body.insertRow();
    r.dataset.id = s.id;
    cell(r, String(s.id), "num");
    cell(r, s.created_at.slice(0, 19).replace("T", " "));
    cell(r, s.status, s.status);
    cell(r, "");
    const outcome = s.failure_message ? `${s.failure_code}: ${s.failure_message}` : "";
    cell(r, outcome + (s.status === "failed" && !s.charged ? " (not counted)" : ""));
  }
  for (const s of subs.filter((x) => !["succeeded", "failed", "cancelled"].includes(x.status))) {
    call(`/submissions/${s.id}`).then((d) => {
      const row = body.querySelector(`tr[data-id="${s.id}"]`);
      if (row && d.queue) row.cells[3].textContent = `position ${d.queue.position} on ${d.queue.queue}`;
    }).catch(() => {});
  }
}

async function upload(file) {
  const progress = $("progress");
  progress.hidden = false;
  let up = await call("/uploads", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ filename: file.name, size: file.size }) });
  const chunk = 8 * 1024 * 1024;
  while (up.status !== "complete") {
    const part = file.slice(up.received, up.received + chunk);
    up = await call(`/uploads/${up.key}?offset=${up.received}`, { method: "PUT", body: part });
    progress.value = up.received / file.size;
  }
  return up.key;
}

async function submit(event) {
  event.preventDefault();
  const { challenge, phase } = state;
  const body = { comment: $("comment").value };
  try {
    if (phase.kind === "algorithm") {
      const file = $("archive").files[0];
      if (!file) throw new Error("choose an image archive");
      body.upload = await upload(file);
    } else {
      body.repository_url = $("repo").value.trim();
      body.ref = $("ref").value.trim();
    }
    const sub = await call(`/challenges/${challenge.slug}/phases/${phase.slug}/submissions`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    $("message").textContent = `Submission ${sub.id} accepted: ${sub.status}`;
    await refresh();
  } catch (err) {
    $("message").textContent = `Refused: ${err.message}`;
  } finally {
    $("progress").hidden = true;
  }
}

$("login").addEventListener("submit", login);
$("submit-form").addEventListener("submit", submit);
if (token()) login();
