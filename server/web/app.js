// heldout's web application: a hash-routed single page that reads and writes only through
// the REST API (/api/v1). Every page render carries a generation number; a response that
// arrives after the user moved on is dropped, so one phase never shows another's data.
import { plotForest, plotPValues, plotRoc } from "./plots.js";

const API = "/api/v1";
const TERMINAL = ["succeeded", "failed", "cancelled"];
const main = document.getElementById("main");
const state = { gen: 0, timers: [], me: null };

// ---------------------------------------------------------------- helpers
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c);
  return el;
}

const token = () => localStorage.getItem("heldout-token") || "";

class ApiError extends Error {}

async function call(path, options = {}) {
  const headers = { Authorization: `Bearer ${token()}`, ...(options.headers || {}) };
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  const resp = await fetch(API + path, { ...options, headers });
  const body = resp.status === 204 ? null : await resp.json().catch(() => null);
  if (!resp.ok) {
    let text = body && body.detail ? body.detail : `HTTP ${resp.status}`;
    if (body && body.field) text += ` (field: ${body.field})`;
    if (body && body.rule) text += ` [rule: ${body.rule}]`;
    const err = new ApiError(text);
    err.status = resp.status;
    throw err;
  }
  return body;
}

const fmt = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(3));
const when = (iso) => (iso ? new Date(iso).toISOString().slice(0, 16).replace("T", " ") + " UTC" : "–");
function relative(iso) {
  const s = Math.round((new Date(iso) - Date.now()) / 1000);
  const a = Math.abs(s);
  const span = a < 3600 ? `${Math.round(a / 60)} min` : a < 172800 ? `${Math.round(a / 3600)} h` : `${Math.round(a / 86400)} days`;
  return s >= 0 ? `in ${span}` : `${span} ago`;
}

function table(caption, headers, rows, attrs = {}) {
  return h("div", { class: "scroll" },
    h("table", attrs,
      h("caption", { text: caption }),
      h("thead", {}, h("tr", {}, headers.map((x) => h("th", { scope: "col", text: x })))),
      h("tbody", {}, rows)));
}

function note(text, kind = "info") {
  return h("p", { class: `note ${kind}`, role: kind === "error" ? "alert" : "status", text });
}

/** A button that runs `action`, shows the API's message next to itself, then `after`. */
function actionButton(label, action, after, attrs = {}) {
  const out = h("span", { class: "result", "aria-live": "polite" });
  const b = h("button", { type: "button", ...attrs, text: label, onclick: async () => {
    b.disabled = true;
    out.textContent = "";
    out.className = "result";
    try {
      const r = await action();
      out.textContent = typeof r === "string" ? r : "done";
      if (after) await after(r);
    } catch (e) {
      out.textContent = e.message;
      out.className = "result error";
    } finally { b.disabled = false; }
  } });
  return h("span", { class: "action" }, b, out);
}

/** Draw the current page again after an action, keeping the keyboard user's place. */
function rerender(ctx) {
  if (!ctx.current()) return;
  const y = window.scrollY;
  route().then(() => { main.focus({ preventScroll: true }); window.scrollTo(0, y); });
}

function every(ms, fn) { state.timers.push(setInterval(fn, ms)); }

function crumbs(items) {
  const ol = document.getElementById("crumbs");
  ol.replaceChildren(...items.map(([label, href], i) => h("li", {},
    i === items.length - 1 ? h("span", { "aria-current": "page", text: label }) : h("a", { href, text: label }))));
}

function page(title, ...children) {
  document.title = `${title} – heldout`;
  main.replaceChildren(h("h1", { text: title }), ...children);
}

// ---------------------------------------------------------------- routing
const routes = [
  [/^#\/$/, home],
  [/^#\/c\/([\w-]+)$/, challengePage],
  [/^#\/c\/([\w-]+)\/p\/([\w-]+)$/, phasePage],
  [/^#\/c\/([\w-]+)\/team$/, teamPage],
  [/^#\/c\/([\w-]+)\/organize$/, organizerPage],
  [/^#\/s\/(\d+)$/, submissionPage],
];

async function route() {
  const gen = ++state.gen;
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  const hash = location.hash || "#/";
  renderAccount();
  if (!token()) { crumbs([["Sign in", "#/"]]); return signIn(); }
  for (const [re, fn] of routes) {
    const m = hash.match(re);
    if (!m) continue;
    try {
      await fn({ gen, current: () => gen === state.gen }, ...m.slice(1).map(decodeURIComponent));
    } catch (e) {
      if (gen !== state.gen) return;
      if (e.status === 401) { localStorage.removeItem("heldout-token"); return route(); }
      page("Something went wrong", note(e.message, "error"), h("p", {}, h("a", { href: "#/", text: "Back to the challenges" })));
    }
    return;
  }
  page("Not found", note(`no page at ${hash}`, "error"), h("p", {}, h("a", { href: "#/", text: "Back to the challenges" })));
}

window.addEventListener("hashchange", () => { route().then(() => main.focus({ preventScroll: true })); });
document.getElementById("skip").addEventListener("click", (e) => { e.preventDefault(); main.focus(); });

async function renderAccount() {
  const box = document.getElementById("account");
  if (!token()) { box.replaceChildren(); state.me = null; return; }
  try { state.me = state.me || await call("/me"); } catch { box.replaceChildren(); return; }
  box.replaceChildren(h("span", { id: "me", text: `signed in as ${state.me.username}` }),
    h("button", { type: "button", id: "signout", text: "Sign out", onclick: () => {
      localStorage.removeItem("heldout-token");
      state.me = null;
      location.hash = "#/";
      route();
    } }));
}

// ---------------------------------------------------------------- pages
function signIn() {
  const err = h("p", { id: "login-error", class: "note error", role: "alert", hidden: true });
  const input = h("input", { id: "token", type: "password", autocomplete: "off", required: true, "aria-describedby": "token-help" });
  const form = h("form", { id: "login", onsubmit: async (e) => {
    e.preventDefault();
    localStorage.setItem("heldout-token", input.value.trim());
    try { state.me = await call("/me"); route(); } catch (x) {
      localStorage.removeItem("heldout-token");
      err.hidden = false;
      err.textContent = x.message;
    }
  } },
  h("label", { for: "token", text: "API token" }), input,
  h("p", { id: "token-help", class: "hint", text: "From `heldout login` or POST /api/v1/tokens." }),
  h("button", { type: "submit", text: "Sign in" }), err);
  page("Sign in", form);
}

async function home(ctx) {
  crumbs([["Challenges", "#/"]]);
  const [list, invitations] = await Promise.all([call("/challenges"), call("/team-invitations")]);
  if (!ctx.current()) return;
  const items = list.map((c) => h("li", {}, h("a", { href: `#/c/${c.slug}`, text: c.title }), ` (${c.slug})`));
  page("Challenges",
    items.length ? h("ul", { id: "challenges" }, items) : note("no challenges yet"),
    invitations.length ? h("section", { "aria-labelledby": "inv-h" }, h("h2", { id: "inv-h", text: "Team invitations" }),
      invitationList(invitations, route)) : "");
}

function invitationList(invitations, after) {
  return h("ul", { class: "invitations" }, invitations.map((i) => h("li", {},
    `${i.invited_by} invites you to team ${i.team} in ${i.challenge} `,
    actionButton("Accept", () => call(`/team-invitations/${i.id}/accept`, { method: "POST" }).then(() => "joined"), after, { "aria-label": `Accept invitation to ${i.team}` }),
    actionButton("Decline", () => call(`/team-invitations/${i.id}/decline`, { method: "POST" }).then(() => "declined"), after, { "aria-label": `Decline invitation to ${i.team}` }))));
}

function phaseWindow(p) {
  const now = Date.now();
  if (p.opens_at && new Date(p.opens_at) > now) return { open: false, text: `opens ${when(p.opens_at)} (${relative(p.opens_at)})` };
  if (p.closes_at && new Date(p.closes_at) <= now) return { open: false, text: `closed ${when(p.closes_at)} (${relative(p.closes_at)})` };
  const opened = p.opens_at ? `opened ${when(p.opens_at)}` : "open";
  return { open: true, text: p.closes_at ? `${opened}; closes ${when(p.closes_at)} (${relative(p.closes_at)})` : `${opened}; no closing date` };
}

async function challengePage(ctx, slug) {
  const c = await call(`/challenges/${slug}`);
  if (!ctx.current()) return;
  crumbs([["Challenges", "#/"], [c.title, `#/c/${slug}`]]);
  const rows = c.phases.map((p) => {
    const w = phaseWindow(p);
    return h("tr", {}, h("th", { scope: "row" }, h("a", { href: `#/c/${slug}/p/${p.slug}`, text: p.title })),
      h("td", { text: p.slug }), h("td", { text: p.kind === "algorithm" ? "T2 image" : "T3 codebase" }),
      h("td", { text: w.text + (p.rules.invite_only ? "; invited teams only" : "") }));
  });
  let join = "";
  if (!c.you_organize && c.phases.some((p) => p.rules.invite_only)) {
    const mine = await call(`/challenges/${slug}/join-requests/mine`);
    if (!ctx.current()) return;
    const last = mine[mine.length - 1];
    const msg = h("input", { id: "join-message", maxlength: "500" });
    const out = h("p", { id: "join-status", role: "status", text: last ? `Your request to join is ${last.status} (sent ${when(last.created_at)}).` : "" });
    join = h("section", { "aria-labelledby": "join-h" }, h("h2", { id: "join-h", text: "Take part" }),
      h("p", { text: "Some phases are open to invited teams only. Ask the organizers to let your team in." }),
      last && last.status !== "declined" ? out : h("form", { id: "join-form", onsubmit: async (e) => {
        e.preventDefault();
        try {
          const r = await call(`/challenges/${slug}/join-requests`, { method: "POST", json: { message: msg.value } });
          out.className = "";
          out.textContent = `Your request to join is ${r.status} (sent ${when(r.created_at)}).`;
          e.target.replaceWith(out);
        } catch (x) { out.className = "error"; out.textContent = x.message; }
      } }, h("label", { for: "join-message", text: "Message to the organizers (optional)" }), msg,
      h("button", { type: "submit", text: "Request to join" }), out));
  }
  page(c.title,
    h("p", { class: "slug", text: `slug: ${c.slug}` }),
    h("p", { text: c.description }),
    table("Phases", ["phase", "slug", "kind", "dates"], rows, { id: "phases" }),
    h("p", {}, h("a", { href: `#/c/${slug}/team`, text: "Your team" }),
      c.you_organize ? [" · ", h("a", { href: `#/c/${slug}/organize`, id: "organize-link", text: "Organize this challenge" })] : ""),
    join);
}

async function phasePage(ctx, slug, phaseSlug) {
  const [c, phase, usage] = await Promise.all([
    call(`/challenges/${slug}`), call(`/challenges/${slug}/phases/${phaseSlug}`),
    call(`/challenges/${slug}/phases/${phaseSlug}/usage`)]);
  if (!ctx.current()) return;
  crumbs([["Challenges", "#/"], [c.title, `#/c/${slug}`], [phase.title, `#/c/${slug}/p/${phaseSlug}`]]);
  const w = phaseWindow(phase);
  const base = `/challenges/${slug}/phases/${phaseSlug}`;
  const facts = h("dl", { class: "facts" },
    h("dt", { text: "slug" }), h("dd", { id: "phase-slug", text: phase.slug }),
    h("dt", { text: "kind" }), h("dd", { text: phase.kind === "algorithm" ? "T2: upload a container image" : "T3: a git repository and ref" }),
    h("dt", { text: "dates" }), h("dd", { id: "dates", text: w.text }),
    h("dt", { text: "your team" }), h("dd", { id: "usage" }));
  const rules = h("ul", { id: "rules" }, phase.rules_text.map((t) => h("li", { text: t })));
  const message = h("p", { id: "message", role: "status", "aria-live": "polite" });
  const submitBox = h("div", {});
  const form = submitForm(phase, base, message, async () => {
    const u = await call(`${base}/usage`);
    if (ctx.current()) showUsage(u);
    await refresh();
  });
  // The team's use of the limits; no Submit on a closed phase or a used-up quota.
  const showUsage = (u) => {
    let use = u.max_submissions ? `${u.used} of ${u.max_submissions} used in the last ${u.window_hours} h` : "";
    if (u.next_allowed_at) use += `${use ? ", " : ""}next at ${when(u.next_allowed_at)} (${relative(u.next_allowed_at)})`;
    facts.querySelector("#usage").textContent = use || "no submissions counted yet";
    if (u.can_submit) submitBox.replaceChildren(form);
    else {
      const n = note(`Submissions are not accepted now: ${u.reason}`, "warn");
      n.id = "no-submit";
      submitBox.replaceChildren(n);
    }
  };
  showUsage(usage);
  const boardBox = h("div", { id: "board" });
  const plots = h("section", { id: "plots", "aria-labelledby": "plots-h" }, h("h2", { id: "plots-h", text: "Plots" }), h("div", { id: "plots-body" }));
  const subsBox = h("div", { id: "subs" });
  page(phase.title,
    facts,
    h("section", { "aria-labelledby": "rules-h" }, h("h2", { id: "rules-h", text: "Rules" }), rules),
    h("section", { "aria-labelledby": "submit-h" }, h("h2", { id: "submit-h", text: "Submit" }), submitBox, message),
    h("section", { "aria-labelledby": "lb-h" }, h("h2", { id: "lb-h", text: "Leaderboard" }), boardBox),
    phase.tasks ? "" : plots,
    h("section", { "aria-labelledby": "subs-h" }, h("h2", { id: "subs-h", text: c.you_organize ? "Submissions (all teams)" : "Your team's submissions" }), subsBox));

  let boardKey = "";
  let lastSubs = "";
  const refresh = async () => {
    if (phase.tasks) {
      // A multi-task phase: the consensus board, then one board per task (no plots).
      const [cons, subs, ...boards] = await Promise.all([call(`${base}/consensus`), call(`${base}/submissions`),
        ...phase.tasks.map((t) => call(`${base}/tasks/${t.slug}/leaderboard`))]);
      if (!ctx.current()) return;
      const key = JSON.stringify([cons, boards]);
      if (key !== boardKey) { boardKey = key; boardBox.replaceChildren(renderTaskBoards(phase, cons, boards)); }
      const subsKey = JSON.stringify(subs);
      if (subsKey !== lastSubs) { lastSubs = subsKey; subsBox.replaceChildren(renderSubmissions(subs, c.you_organize)); }
      return;
    }
    const [board, subs] = await Promise.all([call(`${base}/leaderboard`), call(`${base}/submissions`)]);
    if (!ctx.current()) return;
    const key = JSON.stringify(board);
    if (key !== boardKey) {
      boardKey = key;
      boardBox.replaceChildren(renderBoard(board));
      const stats = await call(`${base}/leaderboard/statistics`);
      if (!ctx.current()) return;
      await renderPlots(document.getElementById("plots-body"), board, stats);
    }
    // Redraw only on change, so a keyboard user's focus in the table is kept.
    const subsKey = JSON.stringify(subs);
    if (subsKey !== lastSubs) { lastSubs = subsKey; subsBox.replaceChildren(renderSubmissions(subs, c.you_organize)); }
  };
  await refresh();
  every(3000, () => refresh().catch(() => {}));
}

function submitForm(phase, base, message, after) {
  const fields = phase.kind === "algorithm"
    ? [h("label", { for: "archive", text: "Image archive (docker save, .tar)" }), h("input", { id: "archive", type: "file", accept: ".tar,.tar.gz", required: true })]
    : [h("label", { for: "repo", text: "Repository URL" }), h("input", { id: "repo", type: "url", required: true }),
      h("label", { for: "ref", text: "Branch, tag or commit" }), h("input", { id: "ref", required: true })];
  const progress = h("progress", { id: "progress", max: "1", value: "0", hidden: true, "aria-label": "upload progress" });
  const form = h("form", { id: "submit-form", onsubmit: async (e) => {
    e.preventDefault();
    const button = form.querySelector("button");
    button.disabled = true;
    message.className = "";
    message.textContent = "uploading…";
    try {
      let body;
      if (phase.kind === "algorithm") body = { upload: await upload(document.getElementById("archive").files[0], progress) };
      else body = { repository_url: document.getElementById("repo").value, ref: document.getElementById("ref").value };
      body.comment = document.getElementById("comment").value;
      const s = await call(`${base}/submissions`, { method: "POST", json: body });
      message.replaceChildren(`Submission ${s.id} accepted: ${s.status}. `, h("a", { href: `#/s/${s.id}`, text: `Follow submission ${s.id}` }));
      await after();
    } catch (err) {
      message.className = "error";
      message.textContent = `Refused: ${err.message}`;
    } finally { button.disabled = false; }
  } }, ...fields,
  h("label", { for: "comment", text: "Comment (optional)" }), h("input", { id: "comment", maxlength: "500" }),
  h("button", { type: "submit", text: "Submit" }), progress);
  return form;
}

async function upload(file, progress) {
  if (!file) throw new Error("choose an archive first");
  progress.hidden = false;
  let up = await call("/uploads", { method: "POST", json: { filename: file.name, size: file.size } });
  const chunk = 8 * 1024 * 1024;
  while (up.status !== "complete") {
    const part = file.slice(up.received, up.received + chunk);
    up = await call(`/uploads/${up.key}?offset=${up.received}`, { method: "PUT", body: part });
    progress.value = up.received / file.size;
  }
  return up.key;
}

// The consensus (mean of task ranks; incomplete teams unranked) and each task's board.
function renderTaskBoards(phase, cons, boards) {
  const tasks = phase.tasks.map((t) => t.slug);
  const rows = cons.entries.map((e) => h("tr", {},
    h("th", { scope: "row", class: "num", text: e.rank === null ? "–" : String(e.rank) }),
    h("td", { text: e.team }),
    h("td", { class: "num", text: e.mean_rank === null ? "–" : fmt(e.mean_rank) }),
    tasks.map((t) => h("td", { class: "num", text: e.task_ranks[t] === null ? "–" : String(e.task_ranks[t]) })),
    h("td", { text: e.complete ? "" : `incomplete: no rank on ${e.missing.join(", ")}` })));
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: String(4 + tasks.length), text: "no scored submissions yet" })));
  return h("div", {},
    h("p", { class: "hint", id: "consensus-rule", text: `Consensus: ${cons.rule}.` }),
    table("Consensus across tasks", ["rank", "team", "mean rank", ...tasks.map((t) => `rank on ${t}`), "note"], rows, { id: "consensus" }),
    phase.tasks.map((t, i) => h("section", { "aria-labelledby": `task-h-${t.slug}` },
      h("h3", { id: `task-h-${t.slug}`, text: `Task: ${t.title}` }),
      renderBoard(boards[i], `-${t.slug}`))));
}

function renderBoard(board, suffix = "") {
  const others = board.metrics.filter((m) => !m.primary).map((m) => m.name);
  const leaders = {};
  for (const e of board.entries) if (e.rank !== null && !e.tied_with_leader) leaders[e.rank] = e.team;
  const rows = board.entries.map((e) => {
    const tie = e.tied_with_leader
      ? h("details", { class: "tie" }, h("summary", { text: `tied with ${leaders[e.rank] || "the rank's leader"}` }),
        h("span", { text: `DeLong p = ${fmt(e.p_vs_rank_leader)} vs ${leaders[e.rank] || "leader"}: not significantly different, so both share rank ${e.rank}` }))
      : (e.rank !== null && board.entries.some((o) => o.rank === e.rank && o !== e) ? "leader of tie group" : "");
    return h("tr", { "data-submission": String(e.submission_id) },
      h("th", { scope: "row", class: "num", text: e.rank === null ? "–" : String(e.rank) }),
      h("td", { text: e.team }),
      h("td", { class: "num", text: fmt(e.value) }),
      h("td", { class: "num", text: e.ci[0] === null ? (e.ci_reason || "–") : `[${fmt(e.ci[0])}, ${fmt(e.ci[1])}]` }),
      h("td", {}, e.unranked_reason ? `unranked: ${e.unranked_reason}` : tie),
      others.map((n) => h("td", { class: "num", text: fmt((e.metrics[n] || {}).value) })));
  });
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: String(5 + others.length), text: "no scored submissions yet" })));
  const ens = board.ensemble;
  if (ens) {
    rows.push(h("tr", { class: "ensemble", id: `ensemble-row${suffix}` },
      h("th", { scope: "row", class: "num", text: "–" }),
      h("td", { text: `Ensemble (${ens.teams.join(", ")})` }),
      h("td", { class: "num", text: fmt(ens.value) }),
      h("td", { class: "num", text: ens.ci[0] === null ? "–" : `[${fmt(ens.ci[0])}, ${fmt(ens.ci[1])}]` }),
      h("td", { text: ens.reason || "the top entries' predictions averaged case by case; not ranked" }),
      others.map(() => h("td", { text: "" }))));
  }
  return h("div", {},
    h("p", { class: "hint", id: `ranking-rule${suffix}`, text: `Ranked by ${board.primary_metric} (${board.higher_is_better ? "higher" : "lower"} is better); ${board.ranking}.` }),
    // A phase holding back private cases ranks on its public part until it closes.
    board.part ? h("p", { class: "hint", id: `board-part${suffix}`, text: `This board ranks on the ${board.part} part of the test set${board.part === "public" ? "; the final board, from the phase's close, ranks on the private part" : ""}.` }) : "",
    table(`Leaderboard: ${board.primary_metric} with 95% CI`, ["rank", "team", board.primary_metric, "95% CI", "tie", ...others], rows, { id: `leaderboard${suffix}` }));
}

async function renderPlots(box, board, stats) {
  box.replaceChildren();
  if (!board.entries.some((e) => e.value !== null)) { box.append(note(stats.reason || "plots appear once submissions are scored")); return; }
  const roc = h("figure", { id: "plot-roc" }), pv = h("figure", { id: "plot-pvalues" }), forest = h("figure", { id: "plot-forest" });
  box.append(forest, roc, pv);
  window.heldoutViews = {};
  window.heldoutViews.forest = await plotForest(forest, board);
  if (Object.keys(stats.roc).length) window.heldoutViews.roc = await plotRoc(roc, stats, 5);
  else roc.append(note("no ROC curves for this metric"));
  if (stats.p_values) window.heldoutViews.pvalues = await plotPValues(pv, stats);
  else pv.append(note(stats.reason || "the DeLong matrix needs two ranked AUC entries"));
}

function outcome(s) {
  if (s.status === "failed") {
    const why = s.failure_code ? `${s.failure_code}: ${s.failure_message || ""}` : s.failure_message || "failed";
    return s.charged ? why : `${why} (platform-caused, not counted)`;
  }
  return s.renounced ? "renounced" : "";
}

function renderSubmissions(subs, organizer) {
  const rows = subs.slice().reverse().map((s) => h("tr", { "data-id": String(s.id), class: s.status === "failed" && !s.charged ? "platform" : "" },
    h("th", { scope: "row" }, h("a", { href: `#/s/${s.id}`, text: `#${s.id}` })),
    organizer ? h("td", { text: s.team }) : "",
    h("td", { text: when(s.created_at) }),
    h("td", { class: `status ${s.status}`, text: s.status }),
    h("td", { text: outcome(s) })));
  if (!rows.length) rows.push(h("tr", {}, h("td", { colspan: organizer ? "5" : "4", text: "no submissions yet" })));
  const headers = ["id", ...(organizer ? ["team"] : []), "created", "state", "outcome"];
  return table(organizer ? "Submissions of all teams" : "Your team's submissions", headers, rows, { id: "submissions" });
}

async function submissionPage(ctx, id) {
  const [s, jobs] = await Promise.all([call(`/submissions/${id}`), call(`/submissions/${id}/jobs`)]);
  if (!ctx.current()) return;
  const c = await call(`/challenges/${s.challenge}`);
  if (!ctx.current()) return;
  // A task's own submission sits under its multi-task submission (its phase is not listed).
  const up = s.parent_id ? [`Submission ${s.parent_id}`, `#/s/${s.parent_id}`] : [s.phase, `#/c/${s.challenge}/p/${s.phase}`];
  crumbs([["Challenges", "#/"], [c.title, `#/c/${s.challenge}`], up, [`Submission ${s.id}`, `#/s/${s.id}`]]);
  const reload = () => rerender(ctx);
  const facts = h("dl", { class: "facts" },
    h("dt", { text: "team" }), h("dd", { text: s.team }),
    h("dt", { text: "state" }), h("dd", { id: "sub-status", class: `status ${s.status}`, text: s.status }),
    h("dt", { text: "outcome" }), h("dd", { id: "sub-outcome", text: outcome(s) || (TERMINAL.includes(s.status) ? s.status : "in progress") }),
    h("dt", { text: "queue" }), h("dd", { id: "sub-queue", text: s.queue ? `position ${s.queue.position} on ${s.queue.queue}${s.queue.estimated_start ? `, starts about ${when(s.queue.estimated_start)}` : ""}` : "not waiting" }),
    h("dt", { text: "source" }), h("dd", { text: s.archive_digest ? `image ${s.archive_digest.slice(0, 19)}…` : `${s.repository_url || ""} @ ${s.ref || ""} ${s.commit_sha ? `(${s.commit_sha.slice(0, 10)})` : ""}` }),
    s.comment ? [h("dt", { text: "comment" }), h("dd", { text: s.comment })] : "",
    s.operator_detail ? [h("dt", { text: "operator detail" }), h("dd", { class: "operator", text: s.operator_detail })] : "");
  const actions = h("p", { class: "actions" },
    TERMINAL.includes(s.status) ? "" : actionButton("Cancel submission", () => call(`/submissions/${s.id}/cancel`, { method: "POST" }).then((r) => `now ${r.status}`), reload, { id: "cancel" }),
    s.status !== "cancelled" && !s.renounced ? actionButton("Renounce", () => call(`/submissions/${s.id}/renounce`, { method: "POST" }).then(() => "renounced"), reload, { id: "renounce" }) : "");
  const timeline = h("ol", { id: "timeline" }, s.transitions.map((t) => h("li", {},
    h("time", { datetime: t.at, text: when(t.at) }), ` ${t.from_status || "–"} → `, h("strong", { text: t.to_status }), t.note ? ` (${t.note})` : "")));
  const steps = table("Jobs per step", ["step", "jobs", "by state"], s.jobs.map((j) => h("tr", {},
    h("th", { scope: "row", text: j.kind }), h("td", { class: "num", text: String(j.total) }),
    h("td", { text: Object.entries(j.by_status).map(([k, v]) => `${v} ${k}`).join(", ") }))), { id: "steps" });
  // A multi-task phase's submission: how each task's run went (each its own submission).
  const taskRuns = s.tasks.length ? table("Tasks", ["task", "state", "outcome", "jobs"], s.tasks.map((t) => h("tr", {},
    h("th", { scope: "row", text: t.task }), h("td", { class: `status ${t.status}`, text: t.status }),
    h("td", { text: t.failure_code ? `${t.failure_code}: ${t.failure_message || ""}` : "" }),
    h("td", {}, h("a", { href: `#/s/${t.submission_id}`, text: `submission ${t.submission_id}` })))), { id: "tasks" }) : "";
  const logs = h("div", { id: "logs" });
  const jobRows = jobs.map((j) => h("tr", {},
    h("th", { scope: "row", text: `${j.kind} #${j.id}` }), h("td", { text: j.status }),
    h("td", { text: j.failure_code ? `${j.failure_code}: ${j.failure_message || ""}` : "" }),
    h("td", { text: j.logs_held ? `held (${j.log_review})` : "visible" }),
    h("td", {}, h("button", { type: "button", text: "Show log", "aria-label": `Show log of ${j.kind} job ${j.id}`, onclick: async () => {
      try {
        const l = await call(`/jobs/${j.id}/logs`);
        logs.replaceChildren(h("h3", { text: `Log of ${j.kind} job ${j.id}` }), h("pre", { tabindex: "0", text: l.released_log || l.log || "(empty)" }));
      } catch (e) { logs.replaceChildren(note(e.message, "error")); }
    } }))));
  // A codebase's trained /output: the API allows it in a feedback round (public training
  // data) and to organizers; anyone else gets its refusal, shown in place.
  const trained = jobs.some((j) => j.kind === "train" && j.status === "succeeded");
  const artifactBox = h("p", { id: "artifacts" });
  if (trained) artifactBox.append(h("button", { type: "button", text: "Download trained model", onclick: async () => {
    try {
      const resp = await fetch(`${API}/submissions/${s.id}/artifacts`, { headers: { Authorization: `Bearer ${token()}` } });
      if (!resp.ok) {
        const body = await resp.json().catch(() => null);
        throw new ApiError(body && body.detail ? body.detail : `HTTP ${resp.status}`);
      }
      const link = h("a", { href: URL.createObjectURL(await resp.blob()), download: `submission-${s.id}-artifacts.tar`, text: `submission-${s.id}-artifacts.tar` });
      artifactBox.replaceChildren("Ready: ", link);
      link.focus();
    } catch (e) { artifactBox.append(note(e.message, "error")); }
  } }));
  page(`Submission ${s.id}`, facts, actions, artifactBox,
    h("section", { "aria-labelledby": "tl-h" }, h("h2", { id: "tl-h", text: "Timeline" }), timeline),
    h("section", { "aria-labelledby": "steps-h" }, h("h2", { id: "steps-h", text: "Steps" }), steps, taskRuns,
      h("details", { id: "jobs-box", open: jobs.length <= 8 }, h("summary", { text: `Every job and its log (${jobs.length})` }),
        table("Jobs and logs", ["job", "state", "reason", "logs", "log"], jobRows, { id: "jobs" })), logs));
  // Follow the run; not while the user is on a control of the page (it would lose focus).
  const busy = () => main.contains(document.activeElement) && document.activeElement !== main;
  if (!TERMINAL.includes(s.status)) every(3000, () => { if (ctx.current() && !busy()) route(); });
}

async function teamPage(ctx, slug) {
  const c = await call(`/challenges/${slug}`);
  if (!ctx.current()) return;
  crumbs([["Challenges", "#/"], [c.title, `#/c/${slug}`], ["Team", `#/c/${slug}/team`]]);
  let team = null;
  try { team = await call(`/challenges/${slug}/teams/mine`); } catch (e) { if (e.status !== 404) throw e; }
  const invitations = (await call("/team-invitations")).filter((i) => i.challenge === slug);
  if (!ctx.current()) return;
  const reload = () => rerender(ctx);
  const parts = [];
  if (team) {
    parts.push(h("p", { id: "team-name", text: `Team ${team.name}${team.solo ? " (just you)" : ""}` }),
      h("h2", { text: "Members" }), h("ul", { id: "members" }, team.members.map((m) => h("li", { text: m }))),
      team.invited.length ? h("p", { text: `Invited: ${team.invited.join(", ")}` }) : "");
    const who = h("input", { id: "invitee", required: true });
    const out = h("p", { role: "status" });
    parts.push(h("form", { id: "invite-form", onsubmit: async (e) => {
      e.preventDefault();
      try { await call(`/teams/${team.id}/invitations`, { method: "POST", json: { username: who.value } }); reload(); } catch (x) { out.className = "error"; out.textContent = x.message; }
    } }, h("label", { for: "invitee", text: "Invite a user by name" }), who, h("button", { type: "submit", text: "Invite" }), out));
  } else {
    const name = h("input", { id: "team-new", required: true, maxlength: "100" });
    const out = h("p", { role: "status" });
    parts.push(note("You are not in a team of this challenge yet; your first submission makes a team of one."),
      h("form", { id: "team-form", onsubmit: async (e) => {
        e.preventDefault();
        try { await call(`/challenges/${slug}/teams`, { method: "POST", json: { name: name.value } }); reload(); } catch (x) { out.className = "error"; out.textContent = x.message; }
      } }, h("label", { for: "team-new", text: "Team name" }), name, h("button", { type: "submit", text: "Create team" }), out));
  }
  parts.push(h("h2", { text: "Invitations to you" }), invitations.length ? invitationList(invitations, reload) : note("none pending"));
  page(`Your team in ${c.title}`, ...parts);
}

async function organizerPage(ctx, slug) {
  const c = await call(`/challenges/${slug}`);
  if (!ctx.current()) return;
  crumbs([["Challenges", "#/"], [c.title, `#/c/${slug}`], ["Organize", `#/c/${slug}/organize`]]);
  if (!c.you_organize) { page("Organize", note("only this challenge's organizers can open this page", "error")); return; }
  const [reviews, events, datasets, joins, ...perPhase] = await Promise.all([
    call(`/challenges/${slug}/log-reviews`), call(`/challenges/${slug}/events`), call(`/challenges/${slug}/datasets`),
    call(`/challenges/${slug}/join-requests`),
    ...c.phases.map((p) => call(`/challenges/${slug}/phases/${p.slug}/submissions`))]);
  if (!ctx.current()) return;
  const reload = () => rerender(ctx);
  const all = perPhase.flatMap((subs, i) => subs.map((s) => ({ ...s, phaseTitle: c.phases[i].title })));

  // Submissions of every team, filterable by state and reason.
  const states = [...new Set(all.map((s) => s.status))].sort();
  const reasons = [...new Set(all.map((s) => s.failure_code).filter(Boolean))].sort();
  const fState = h("select", { id: "filter-state" }, h("option", { value: "", text: "any state" }), states.map((x) => h("option", { value: x, text: x })));
  const fReason = h("select", { id: "filter-reason" }, h("option", { value: "", text: "any reason" }), reasons.map((x) => h("option", { value: x, text: x })));
  const subsBox = h("div", {});
  const drawSubs = () => {
    const shown = all.filter((s) => (!fState.value || s.status === fState.value) && (!fReason.value || s.failure_code === fReason.value));
    subsBox.replaceChildren(table("Submissions of all teams", ["id", "phase", "team", "created", "state", "outcome", "action"], shown.slice().reverse().map((s) =>
      h("tr", { class: s.status === "failed" && !s.charged ? "platform" : "", "data-id": String(s.id) },
        h("th", { scope: "row" }, h("a", { href: `#/s/${s.id}`, text: `#${s.id}` })),
        h("td", { text: s.phase }), h("td", { text: s.team }), h("td", { text: when(s.created_at) }),
        h("td", { class: `status ${s.status}`, text: s.status }),
        h("td", {}, s.status === "failed" && !s.charged ? h("strong", { text: "⚠ platform/evaluation: " }) : "", outcome(s)),
        h("td", {}, TERMINAL.includes(s.status) ? "" : actionButton("Cancel", () => call(`/submissions/${s.id}/cancel`, { method: "POST" }).then((r) => r.status), reload, { "aria-label": `Cancel submission ${s.id}` })))), { id: "all-submissions" }));
  };
  fState.onchange = drawSubs;
  fReason.onchange = drawSubs;
  drawSubs();

  // Log review queue, grouped per submission: one entry or the whole batch.
  const bySub = {};
  for (const r of reviews) (bySub[r.submission_id] ||= []).push(r);
  const reviewBox = h("div", { id: "reviews" });
  const logView = h("div", { id: "review-log" });
  for (const [sid, entries] of Object.entries(bySub)) {
    const redact = h("input", { id: `redact-${sid}`, placeholder: "strings to blank out, comma separated" });
    const redactions = () => redact.value.split(",").map((x) => x.trim()).filter(Boolean);
    reviewBox.append(h("section", { class: "review", "aria-label": `Held logs of submission ${sid}` },
      h("h3", {}, `Submission `, h("a", { href: `#/s/${sid}`, text: `#${sid}` }), ` (${entries.length} held log${entries.length > 1 ? "s" : ""})`),
      h("label", { for: `redact-${sid}`, text: "Redact before release" }), redact,
      entries.length > 1 ? actionButton("Release all", async () => { for (const r of entries) await call(`/jobs/${r.job_id}/logs/release`, { method: "POST", json: { redactions: redactions() } }); return "released"; }, reload, { "aria-label": `Release all logs of submission ${sid}` }) : "",
      entries.length > 1 ? actionButton("Refuse all", async () => { for (const r of entries) await call(`/jobs/${r.job_id}/logs/refuse`, { method: "POST" }); return "refused"; }, reload, { "aria-label": `Refuse all logs of submission ${sid}` }) : "",
      h("details", { open: entries.length <= 5 }, h("summary", { text: `Each held log (${entries.length})` }),
        h("ul", {}, entries.map((r) => h("li", { "data-job": String(r.job_id) }, `${r.kind} job ${r.job_id}: ${r.status}${r.failure_code ? ` (${r.failure_code})` : ""} `,
        h("button", { type: "button", text: "Read", "aria-label": `Read log of job ${r.job_id}`, onclick: async () => {
          try { const l = await call(`/jobs/${r.job_id}/logs`); logView.replaceChildren(h("h3", { text: `Log of job ${r.job_id}` }), h("pre", { tabindex: "0", text: l.log || "(empty)" })); } catch (e) { logView.replaceChildren(note(e.message, "error")); }
        } }),
        actionButton("Release", () => call(`/jobs/${r.job_id}/logs/release`, { method: "POST", json: { redactions: redactions() } }).then((x) => x.review), reload, { "aria-label": `Release log of job ${r.job_id}` }),
        actionButton("Refuse", () => call(`/jobs/${r.job_id}/logs/refuse`, { method: "POST" }).then((x) => x.review), reload, { "aria-label": `Refuse log of job ${r.job_id}` })))))));
  }
  if (!reviews.length) reviewBox.append(note("no logs wait for review"));

  const phaseTools = c.phases.map((p) => {
    const who = h("input", { id: `invite-${p.slug}`, required: true, maxlength: "100" });
    const out = h("p", { role: "status" });
    return h("section", { "aria-labelledby": `tools-${p.slug}` }, h("h3", { id: `tools-${p.slug}`, text: p.title }),
      actionButton(`Re-evaluate ${p.title}`, () => call(`/challenges/${slug}/phases/${p.slug}/reevaluate`, { method: "POST" }).then((r) => `queued: ${r.queued.length ? r.queued.join(", ") : "nothing stale"}`), null, { id: `reevaluate-${p.slug}` }),
      p.rules.invite_only ? h("form", { onsubmit: async (e) => {
        e.preventDefault();
        try {
          const r = await call(`/challenges/${slug}/phases/${p.slug}/invitations`, { method: "POST", json: { username: who.value.trim() } });
          out.className = "";
          out.textContent = `team ${r.team} may now submit to ${p.title}`;
        } catch (x) { out.className = "error"; out.textContent = x.message; }
      } }, h("label", { for: `invite-${p.slug}`, text: "Invite a participant (user name) to this invite-only phase" }), who,
      h("button", { type: "submit", text: "Invite", "aria-label": `Invite to ${p.title}` }), out) : "");
  });

  page(`Organize ${c.title}`,
    h("section", { "aria-labelledby": "o-subs" }, h("h2", { id: "o-subs", text: "All submissions" }),
      h("div", { class: "filters" }, h("label", { for: "filter-state", text: "State" }), fState, h("label", { for: "filter-reason", text: "Reason" }), fReason), subsBox),
    h("section", { "aria-labelledby": "o-rev" }, h("h2", { id: "o-rev", text: "Log review queue" }), reviewBox, logView),
    h("section", { "aria-labelledby": "o-join" }, h("h2", { id: "o-join", text: "Join requests" }),
      joins.length ? h("ul", { id: "join-requests" }, joins.map((j) => h("li", { "data-request": String(j.id) },
        `${j.user} asked ${when(j.created_at)}${j.message ? `: “${j.message}”` : ""} `,
        actionButton("Approve", () => call(`/challenges/${slug}/join-requests/${j.id}/approve`, { method: "POST" }).then((r) => r.status), reload, { "aria-label": `Approve join request of ${j.user}` }),
        actionButton("Decline", () => call(`/challenges/${slug}/join-requests/${j.id}/decline`, { method: "POST" }).then((r) => r.status), reload, { "aria-label": `Decline join request of ${j.user}` })))) : note("no pending join requests")),
    h("section", { "aria-labelledby": "o-ph" }, h("h2", { id: "o-ph", text: "Phases" }), phaseTools),
    h("section", { "aria-labelledby": "o-ev" }, h("h2", { id: "o-ev", text: "Organizer events" }),
      events.length ? h("ul", { id: "events" }, events.map((e) => h("li", { class: "event" }, h("time", { datetime: e.created_at, text: when(e.created_at) }), ` ${e.kind}${e.phase ? ` (${e.phase})` : ""}: ${e.message} `, e.submission_id ? h("a", { href: `#/s/${e.submission_id}`, text: `open submission ${e.submission_id}` }) : ""))) : note("no events")),
    h("section", { "aria-labelledby": "o-ds" }, h("h2", { id: "o-ds", text: "Datasets" }),
      table("Datasets and versions", ["slug", "title", "version", "cases", "public", "digest"], datasets.map((d) => h("tr", {},
        h("th", { scope: "row", text: d.slug }), h("td", { text: d.title || "" }), h("td", { class: "num", text: String(d.version) }),
        h("td", { class: "num", text: String(d.n_cases) }), h("td", { text: d.public ? "yes" : "no" }), h("td", { class: "digest", text: (d.digest || "").slice(0, 19) }))), { id: "datasets" })));
}

route();
