// agl-tinker view: curves (uPlot), steps, rollouts, chat and token views over /api/*. No build step.
"use strict";
const COLORS = ["#1976d2", "#e53935", "#43a047", "#fb8c00", "#8e24aa", "#00897b", "#6d4c41", "#546e7a"];
const S = { policy: null, steps: {}, evals: {}, kind: "step", metrics: [], total: 0, step: null, rows: [], filter: "all", agent: "",
            selected: null, metricKey: null, lastStepsKey: "" };
const $ = (sel) => document.querySelector(sel);
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; };
const fmt = (v, d = 3) => (v === null || v === undefined) ? "" : (typeof v === "number" ? (v >= 0 ? "+" : "") + v.toFixed(d) : String(v));
const q = () => `?kind=${S.kind}` + (S.policy ? `&policy=${encodeURIComponent(S.policy)}` : "");
async function getJSON(url) { const r = await fetch(url, { cache: "no-store" }); if (!r.ok) throw new Error(`${url}: ${r.status}`); return r.json(); }

// ---------------------------------------------------------------- polling (a live run grows)
async function poll() {
  try {
    const run = await getJSON("/api/run");
    $("#logpath").textContent = run.log_path;
    S.steps = run.steps; S.evals = run.evals || {};
    const policies = [...new Set([...Object.keys(run.steps), ...Object.keys(S.evals)])].sort();
    if (S.policy === null || !policies.includes(S.policy)) S.policy = policies.includes("") ? "" : (policies[0] ?? "");
    renderPolicies(policies);
    renderSteps();
    const m = await getJSON(`/api/metrics?since=${S.total}`);
    if (m.total < S.total) { S.metrics = []; S.total = 0; return; }  // rewritten (a resumed run): read again next time
    if (m.rows.length) { S.metrics.push(...m.rows); S.total = m.total; renderCharts(); }
    $("#live").className = "on";
  } catch (err) { $("#live").className = ""; console.error(err); }
}

function renderPolicies(policies) {
  const nav = $("#policies");
  const key = policies.join("|") + "/" + S.policy;
  if (nav.dataset.key === key) return;
  nav.dataset.key = key; nav.innerHTML = "";
  if (policies.length < 2 && (policies[0] ?? "") === "") return;
  for (const p of policies) {
    const b = el("button", p === S.policy ? "on" : "", p || "(shared)");
    b.onclick = () => { S.policy = p; S.step = null; S.lastStepsKey = ""; nav.dataset.key = ""; poll(); renderCharts(); clearStep(); };
    nav.append(b);
  }
}

function renderSteps() {
  // evaluation N ran before step N: it is listed first
  const items = [...(S.evals[S.policy] ?? []).map((s) => [s, "eval"]), ...(S.steps[S.policy] ?? []).map((s) => [s, "step"])]
    .sort((a, b) => a[0] - b[0] || (a[1] === "eval" ? -1 : 1));
  const key = S.policy + ":" + items.map((x) => x.join("")).join(",");
  if (key === S.lastStepsKey) return;
  const id = (s, kind) => `${kind}${s}`;
  const known = new Set([...document.querySelectorAll("#step-list li")].map((li) => id(li.dataset.step, li.dataset.kind)));
  const first = S.lastStepsKey === "";
  S.lastStepsKey = key;
  const ul = $("#step-list"); ul.innerHTML = "";
  for (const [s, kind] of items) {
    const on = String(s) === String(S.step) && kind === S.kind;
    const li = el("li", (on ? "on" : "") + (kind === "eval" ? " eval" : "") + (!first && !known.has(id(s, kind)) ? " new" : ""), `${kind === "eval" ? "eval" : "step"} ${s}`);
    li.dataset.step = s; li.dataset.kind = kind;
    li.onclick = () => openStep(s, kind);
    ul.append(li);
  }
  const steps = S.steps[S.policy] ?? [];
  if (S.step === null && steps.length) openStep(steps[steps.length - 1], "step");
}

// ---------------------------------------------------------------- curves
function prefix() { return S.policy ? `policy/${S.policy}/` : ""; }
function byStep() {
  const merged = new Map();
  for (const r of S.metrics) { if (typeof r.step !== "number") continue; merged.set(r.step, Object.assign(merged.get(r.step) ?? {}, r)); }
  return [...merged.keys()].sort((a, b) => a - b).map((k) => merged.get(k));
}
function chart(target, rows, keys, labels, empty = "no data yet") {
  const box = $(target); box.innerHTML = "";
  if (!keys.length) { box.append(el("div", "", empty)); return; }
  const data = [rows.map((r) => r.step), ...keys.map((k) => rows.map((r) => (typeof r[k] === "number" ? r[k] : null)))];
  const series = [{ label: "step" }, ...keys.map((k, i) => ({ label: labels ? labels[i] : k, stroke: COLORS[i % COLORS.length],
    width: 2, spanGaps: true, points: { show: true, size: 4 } }))];
  new uPlot({ width: 420, height: 200, series, scales: { x: { time: false } }, legend: { live: false } }, data, box);
}
function renderCharts() {
  const rows = byStep(); const p = prefix();
  const keys = new Set(); rows.forEach((r) => Object.keys(r).forEach((k) => { if (typeof r[k] === "number") keys.add(k); }));
  const reward = [[p + "reward/mean", "train reward"], ["eval/" + p + "reward/mean", "validation reward"],
                  [p + "eval/reward/mean", "validation reward"], ["eval/reward/mean", "validation reward"]]
    .filter(([k]) => keys.has(k)).filter((x, i, a) => a.findIndex((y) => y[1] === x[1]) === i);
  chart("#chart-reward", rows, reward.map((x) => x[0]), reward.map((x) => x[1]));
  const excl = [...keys].filter((k) => k.startsWith(p + "excluded/")).sort();
  chart("#chart-excluded", rows, excl, excl.map((k) => k.slice((p + "excluded/").length)), "no rollout excluded so far");
  const select = $("#metric-select"); const all = [...keys].filter((k) => k !== "step").sort();
  if (select.options.length !== all.length) {
    const keep = S.metricKey; select.innerHTML = "";
    for (const k of all) select.append(new Option(k, k));
    S.metricKey = keep && all.includes(keep) ? keep : (all.find((k) => k === p + "align/drift_events") ?? all[0]);
    select.value = S.metricKey;
  }
  if (S.metricKey) chart("#chart-metric", rows, [S.metricKey]);
}
$("#metric-select").onchange = (e) => { S.metricKey = e.target.value; renderCharts(); };

// ---------------------------------------------------------------- a step's rollouts
function clearStep() { $("#rollouts tbody").innerHTML = ""; $("#step-title").textContent = "Pick a step"; clearRollout(); }
async function openStep(step, kind = "step") {
  S.step = step; S.kind = kind; S.selected = null;
  document.querySelectorAll("#step-list li").forEach((li) => li.classList.toggle("on", li.dataset.step === String(step) && li.dataset.kind === kind));
  S.rows = await getJSON(`/api/step/${step}${q()}`);
  $("#step-title").textContent = `${kind === "eval" ? "Validation before step" : "Step"} ${step}: ${S.rows.length} rollouts, ${S.rows.filter((r) => r.detailed).length} with transcripts`;
  const agents = [...new Set(S.rows.flatMap((r) => r.agents || []))].sort();
  const sel = $("#agent-filter"); sel.innerHTML = ""; sel.append(new Option("any agent", ""));
  agents.forEach((a) => sel.append(new Option(a, a))); sel.value = agents.includes(S.agent) ? S.agent : (S.agent = "");
  const groups = new Map(); S.rows.forEach((r) => groups.set(r.group, r.group_staleness ?? 0));
  const stale = [...groups.entries()];
  $("#staleness").textContent = stale.some(([, s]) => s > 0)
    ? "staleness per group (versions behind): " + stale.map(([g, s]) => `g${g}: ${s}`).join(", ") : "all groups on-policy (staleness 0)";
  renderRollouts(); clearRollout();
}
function filtered() {
  let rows = S.rows.filter((r) => !S.agent || (r.agents || []).includes(S.agent));
  if (S.filter === "excluded") rows = rows.filter((r) => r.exclusion);
  if (S.filter === "drifted") rows = rows.filter((r) => r.drift || r.gaps);
  if (S.filter === "best" || S.filter === "worst") {
    rows = rows.filter((r) => r.reward !== null).sort((a, b) => (S.filter === "best" ? b.reward - a.reward : a.reward - b.reward)).slice(0, 10);
  }
  return rows;
}
function renderRollouts() {
  const tbody = $("#rollouts tbody"); tbody.innerHTML = "";
  for (const r of filtered()) {
    const tr = el("tr", "row" + (r.detailed ? "" : " summary-only") + (r.index === S.selected ? " sel" : ""));
    tr.dataset.index = r.index;
    const tools = r.tools && r.tools.offered ? `${r.tools.calls}${r.tools.parse_failures ? ` (${r.tools.parse_failures} unparsed)` : ""}` : "";
    const cells = [`${r.group}.${r.slot}`, fmt(r.reward), fmt(r.advantage), r.exclusion || "", r.drift || r.gaps ? `${r.drift}${r.gaps ? ` +${r.gaps} lost` : ""}` : "",
      `${r.calls_trained}/${r.calls_total}`, tools, (r.agents || []).join(" "), String(r.staleness ?? ""), r.status || ""];
    cells.forEach((c, i) => tr.append(el("td", i === 3 && c ? "excl" : i === 4 && c ? "drift" : "", c)));
    tr.title = r.detailed ? "open its transcript" : (r.detail_cut ? "summary only: the step's 1 MB cap was reached" : "summary only (not sampled)");
    if (r.detailed) tr.onclick = () => openRollout(r.index);
    tbody.append(tr);
  }
}
document.querySelectorAll("#filters button").forEach((b) => (b.onclick = () => {
  S.filter = b.dataset.filter; document.querySelectorAll("#filters button").forEach((x) => x.classList.toggle("on", x === b)); renderRollouts();
}));
$("#agent-filter").onchange = (e) => { S.agent = e.target.value; renderRollouts(); };

// ---------------------------------------------------------------- one rollout: chat and tokens
function clearRollout() { $("#rollout-title").textContent = ""; $("#rollout-meta").textContent = ""; $("#chat").innerHTML = ""; $("#tokens").innerHTML = ""; }
async function openRollout(index) {
  S.selected = index; renderRollouts();
  const row = await getJSON(`/api/rollout/${S.step}/${index}${q()}`);
  $("#rollout-title").textContent = `Rollout ${row.group}.${row.slot} (${row.rollout_id})`;
  const meta = [`reward ${fmt(row.reward)}`, `advantage ${fmt(row.advantage)}`, row.trained ? "trained" : "not trained",
    row.exclusion ? `EXCLUDED: ${row.exclusion}` : "", row.drift ? `${row.drift} drift` : "",
    `weights ${(row.weights_versions || []).join(",")} (staleness ${row.staleness})`, `task ${JSON.stringify(row.task)}`];
  $("#rollout-meta").textContent = meta.filter(Boolean).join(" · ");
  renderChat(row); renderTokens(row);
}
function messageBox(m) {
  const box = el("div", "msg " + (m.role || ""));
  box.append(el("span", "role", m.role || "?"));
  const content = typeof m.content === "string" ? m.content : m.content ? JSON.stringify(m.content) : "";
  box.append(document.createTextNode(content));
  for (const c of m.tool_calls || []) { const f = c.function || c; box.append(el("div", "toolcall", `→ ${f.name}(${f.arguments})`)); }
  return box;
}
function renderChat(row) {
  const chat = $("#chat"); chat.innerHTML = "";
  for (const c of row.calls || []) {
    const bits = [`call ${c.index}`, c.agent, c.model, `weights ${c.weights_version ?? "?"}`, c.finish_reason,
      c.trained ? "trained" : `not trained${c.problem ? ": " + c.problem : ""}`, c.reward ? `reward ${fmt(c.reward)}` : ""];
    chat.append(el("div", "call-head", bits.filter(Boolean).join(" · ")));
    (c.messages || []).forEach((m) => chat.append(messageBox(m)));
    if (c.completion) chat.append(messageBox(c.completion));
  }
  for (const d of row.drift_reports || []) chat.append(el("div", "drift", `drift at call ${d.call}, prompt token ${d.token_index}: expected ${JSON.stringify(d.expected_text)}, got ${JSON.stringify(d.actual_text)} (${d.kind})`));
}
function tokenSpan(row, t, cls, lp) {
  const s = el("span", "tok " + cls, row.token_text ? (row.token_text[String(t)] ?? `⟨${t}⟩`) : `⟨${t}⟩ `);
  if (lp !== undefined && lp !== null) {
    s.style.background = `hsl(${Math.round(120 * Math.exp(lp))}, 75%, 82%)`;  // sampled probability: red low, green high
    s.title = `id ${t} · logprob ${lp.toFixed(3)}`;
  } else s.title = `id ${t}`;
  return s;
}
function renderTokens(row) {
  const box = $("#tokens"); box.innerHTML = "";
  const legend = el("div", "legend");
  legend.innerHTML = `<span class="tok obs">observation (masked)</span><span class="tok act" style="background:hsl(110,75%,82%)">action, likely</span>` +
    `<span class="tok act" style="background:hsl(10,75%,82%)">action, unlikely</span><span class="drift-mark">drift</span> advantage ${fmt(row.advantage)}`;
  box.append(legend);
  const drifts = new Map((row.drift_reports || []).map((d) => [d.call, d]));
  let seq = undefined;
  const frag = document.createDocumentFragment();
  for (const c of row.calls || []) {
    if (c.sequence !== seq || c.sequence === null) {
      seq = c.sequence;
      frag.append(el("span", "seq-break", c.sequence === null ? `call ${c.index}: not trained (${c.problem || "skipped"})` : `sequence ${c.sequence}`));
    }
    if (c.tokens_cut || !c.prompt) { frag.append(el("span", "", `[call ${c.index}: tokens not stored]`)); continue; }
    const d = drifts.get(c.index);
    c.prompt.forEach((t, i) => {
      if (d && i + c.prompt_from === d.token_index) frag.append(el("span", "drift-mark", `drift: expected ${JSON.stringify(d.expected_text)}`));
      frag.append(tokenSpan(row, t, "obs"));
    });
    const lps = c.logprobs || [];
    c.response.forEach((t, i) => frag.append(tokenSpan(row, t, "act" + (c.trained ? "" : " untrained"), c.trained ? lps[i] : undefined)));
  }
  box.append(frag);
}
document.querySelectorAll("#rollout-tabs button").forEach((b) => (b.onclick = () => {
  document.querySelectorAll("#rollout-tabs button").forEach((x) => x.classList.toggle("on", x === b));
  $("#chat").hidden = b.dataset.view !== "chat"; $("#tokens").hidden = b.dataset.view !== "tokens";
}));

poll(); setInterval(poll, 2000);
