// cincer annotation page: keyboard first, mouse too, Tab/Shift+Tab reach every control. Talks to /api/* only.
// Everything from the data (texts, labels, names, keys) goes through esc() before it reaches innerHTML;
// the only HTML taken as is comes from the server's Markdown renderer (the instructions), escaped there.
"use strict";
(function () {
  let state = JSON.parse(document.getElementById("initial-state").textContent);
  let chosen = { suspicious: null, counter: null };
  let focus = "suspicious";
  let counterOverride = null; // an alternative counter-example picked by the user
  let alternatives = null;
  let skipped = null; // the skipped list, while it is open
  let busy = false;
  let stale = 0; // polls that found the shown query no longer this page's current one
  let generation = 0; // bumped by every new state, so a poll answered about an older one is ignored

  const $ = (sel) => document.querySelector(sel);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const pct = (p) => `${(100 * p).toFixed(0)}%`;
  const hotkeys = () => state.project.hotkeys || [];
  const keyFor = (i) => hotkeys()[i] || null;
  const classOfKey = (k) => {
    const low = k.toLowerCase(), keys = hotkeys();
    for (let i = 0; i < keys.length; i++) if (keys[i] && keys[i].toLowerCase() === low) return i;
    return null;
  };
  const name = (i) => state.project.class_names[i];
  const counterOf = (q) => (q ? counterOverride || q.counter : null);

  // the printed link carries ?token=…; the server has set a cookie, so the address bar need not show it
  if (/[?&]token=/.test(location.search)) history.replaceState(null, "", location.pathname);

  function message(text, kind) {
    const el = $("#message");
    el.textContent = text;
    el.className = kind || "";
  }

  async function api(method, url, body) {
    const res = await fetch(url, {
      method, headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined, credentials: "same-origin",
    });
    let data = null;
    try { data = await res.json(); } catch (e) { data = { detail: res.statusText }; }
    return { status: res.status, data };
  }

  // numbers as people write them: no scientific notation from 0.01 up (1520, not 1.52e+3)
  const fmt = (v) => {
    if (typeof v !== "number") return esc(v);
    if (!isFinite(v)) return String(v);
    const a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1000) return v.toLocaleString("en-US", { maximumFractionDigits: 2, useGrouping: false });
    if (a >= 0.01) return String(+v.toFixed(3));
    return String(+v.toPrecision(3));
  };

  function f1Chart(points) {
    if (!points || points.length < 1) return "";
    const w = 220, h = 48, pad = 4;
    const xs = points.map((p, i) => i), ys = points.map((p) => p.f1);
    const lo = Math.min(...ys) - 0.02, hi = Math.max(...ys) + 0.02;
    const sx = (i) => pad + (points.length === 1 ? 0 : (i * (w - 2 * pad)) / (points.length - 1));
    const sy = (v) => h - pad - ((v - lo) * (h - 2 * pad)) / (hi - lo || 1);
    const path = xs.map((i) => `${sx(i).toFixed(1)},${sy(ys[i]).toFixed(1)}`).join(" ");
    const last = ys[ys.length - 1];
    return `<span class="f1"><svg id="f1-chart" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}" role="img" aria-label="held-out F1 over time">
      <polyline fill="none" stroke="#2a6fdb" stroke-width="2" points="${path}"/>
      <circle cx="${sx(xs.length - 1)}" cy="${sy(last)}" r="3" fill="#2a6fdb"/></svg>
      <span>held-out F1 <b id="f1-last">${last.toFixed(3)}</b></span></span>`;
  }

  function statusText(p) {
    if (p.retraining) return "retraining the model on the new labels… (the last model answers meanwhile)";
    return `model v${p.model_version}${p.train_seconds !== null && p.train_seconds !== undefined ? ` · trained in ${p.train_seconds.toFixed(1)} s` : ""}`;
  }

  function renderProgress() {
    const p = state.progress;
    const pct100 = p.total ? (100 * p.seen) / p.total : 100;
    $("#progress").innerHTML = `
      <div class="bar" title="${p.seen} of ${p.total} examples seen"><div style="width:${pct100.toFixed(1)}%"></div></div>
      <span><b id="n-answered">${p.answered}</b> queries answered</span>
      <span><b id="n-changed">${p.labels_changed}</b> labels changed</span>
      <span><b id="n-seen">${p.seen}</b>/${p.total} examples seen</span>
      <span id="live-status" class="muted" aria-live="polite">${esc(statusText(p))}</span>
      ${f1Chart(p.f1)}`;
    const n = $("#n-skipped");
    if (n) n.textContent = String(p.skipped);
  }

  const EXPORTS = [["labels.csv", "Download labels (CSV)"], ["audit.csv", "audit log (CSV)"],
    ["cleaned.json", "JSON"], ["labels.parquet", "Parquet"]];
  function exportLinks(idPrefix) {
    return EXPORTS.map(([file, text], i) =>
      `<a class="button${i === 0 ? " primary" : ""}" id="${idPrefix}-${file.replace(".", "-")}" href="/api/export/${file}" download>${text}</a>`).join(" ");
  }

  function renderTools() {
    const who = state.project.per_user ? `<span class="who">signed in as <b>${esc(state.project.user)}</b></span>` : "";
    $("#tools").innerHTML = `${who}
      <button type="button" data-cmd="skipped" aria-controls="skipped">Skipped (<span id="n-skipped">${state.progress.skipped}</span>)</button>
      <span class="exports">${exportLinks("export")}</span>
      <button type="button" data-cmd="help" aria-controls="help" title="instructions and keys">? Help</button>`;
  }

  function cell(f, css) {
    if (!f) return "<td></td>";
    if (f.missing) return `<td class="missing ${css}" title="missing in the data">missing</td>`;
    return `<td class="${css}">${typeof f.value === "number" ? fmt(f.value) : esc(f.value)}</td>`;
  }

  function exampleBody(ex, other, highlight) {
    if (ex.kind === "image") return `<img class="example-img" alt="example ${ex.id}" src="${esc(ex.image_url)}">`;
    if (ex.kind === "text") return `<blockquote class="text">${esc(ex.text)}</blockquote>`;
    const hl = new Set(highlight || []);
    const rows = ex.features.map((f, i) => ({ f, i })).sort((a, b) => (hl.has(b.i) ? 1 : 0) - (hl.has(a.i) ? 1 : 0)).slice(0, 40);
    const head = other ? `<thead><tr><th></th><th>this</th><th class="muted">counter</th></tr></thead>` : "";
    return `<table class="features">${head}<tbody>${rows.map(({ f, i }) =>
      `<tr class="${hl.has(i) ? "hl" : ""}"><th>${esc(f.name)}</th>${cell(f, "")}${other ? cell(other.features[i], "muted") : ""}</tr>`).join("")}</tbody></table>`;
  }

  function labelButtons(role, ex) {
    return `<div class="labels" role="group" aria-label="label of the ${role === "suspicious" ? "suspicious example" : "counter-example"}">${state.project.class_names.map((cls, i) => {
      const k = keyFor(i);
      const css = [chosen[role] === i ? "chosen" : "", ex.label === i ? "current" : ""].join(" ");
      const text = k === cls ? esc(cls) : `${k ? `<kbd>${esc(k)}</kbd> ` : ""}${esc(cls)}`;
      return `<button type="button" class="${css}" data-role="${role}" data-label="${i}" aria-pressed="${chosen[role] === i}" title="label “${esc(cls)}”${k ? ` (key ${esc(k)})` : ""}">${text}</button>`;
    }).join("")}</div>`;
  }

  function modelLine(ex) {
    const m = ex.model;
    if (!m) return "";
    return `<div class="model">model: <b>${esc(m.prediction_name)}</b> (${pct(m.confidence)} sure) · probability of the current label “${esc(ex.label_name)}”: ${pct(m.label_confidence)}</div>`;
  }

  function card(role, ex, q, other) {
    const title = role === "suspicious" ? "Suspicious example" : "Counter-example";
    const key = ex.key !== null && ex.key !== undefined ? ` <span class="muted key" title="key in your data">key ${esc(ex.key)}</span>` : "";
    const pick = chosen[role] === null ? "" : ` → <b class="new-label">${esc(name(chosen[role]))}</b>`;
    return `<section class="card ${focus === role ? "focused" : ""}" data-role="${role}" data-example="${ex.id}" tabindex="0" aria-label="${title} #${ex.id}">
      <h2>${title} <span class="muted">#${ex.id}</span>${key}</h2>
      ${exampleBody(ex, role === "suspicious" ? other : null, q.highlight)}
      <div class="current-label">current label: <b>${esc(ex.label_name)}</b>${pick}</div>${modelLine(ex)}
      ${labelButtons(role, ex)}</section>`;
  }

  function summaryHtml() {
    const s = state.summary || { answered: state.progress.answered, changed: state.progress.labels_changed, skipped: state.progress.skipped, open_elsewhere: 0, f1_first: null, f1_last: null };
    const others = s.open_elsewhere ? ` ${s.open_elsewhere} open ${s.open_elsewhere === 1 ? "query is" : "queries are"} with other annotators.` : "";
    const f1 = s.f1_first !== null && s.f1_last !== null
      ? `<li>held-out F1: <b>${s.f1_first.toFixed(3)}</b> with the first model → <b id="sum-f1">${s.f1_last.toFixed(3)}</b> now ${f1Chart(state.progress.f1)}</li>` : "";
    return `<section class="done" id="summary" aria-label="summary">
      <h2>Queue finished</h2>
      <p>No more suspicious examples: every example has been seen.${others}</p>
      <ul class="summary">
        <li><b id="sum-answered">${s.answered}</b> queries answered</li>
        <li><b id="sum-changed">${s.changed}</b> labels changed</li>
        <li><b id="sum-skipped">${s.skipped}</b> skipped${s.skipped ? " — revisit them below" : ""}</li>${f1}
      </ul>
      <p class="exports">${exportLinks("summary")}</p>
      ${state.last_decision ? `<button type="button" data-cmd="undo">Undo the last decision <kbd>u</kbd></button>` : ""}
    </section>`;
  }

  // re-rendering replaces the elements: put the keyboard focus back where it was
  function focusSelector(el) {
    if (!el || el === document.body || !el.dataset) return null;
    if (el.dataset.label !== undefined) return `button[data-role="${el.dataset.role}"][data-label="${el.dataset.label}"]`;
    if (el.dataset.cmd) return `[data-cmd="${el.dataset.cmd}"]${el.dataset.id ? `[data-id="${el.dataset.id}"]` : ""}`;
    if (el.classList.contains("card")) return `.card[data-role="${el.dataset.role}"]`;
    if (el.id) return `#${CSS.escape(el.id)}`;
    return null;
  }
  function keepingFocus(fn) {
    const sel = focusSelector(document.activeElement);
    fn();
    if (sel && (!document.activeElement || document.activeElement === document.body)) {
      const el = document.querySelector(sel);
      if (el) el.focus({ preventScroll: true });
    }
  }

  function render() {
    keepingFocus(() => {
      renderProgress();
      renderTools();
      renderMain();
      if (skipped) renderSkipped();
    });
  }

  function renderMain() {
    const main = $("#main");
    const q = state.query;
    if (!q) {
      main.dataset.queryId = "";
      main.innerHTML = summaryHtml();
      return;
    }
    const counter = counterOf(q);
    const sentence = counterOverride
      ? q.sentence.replace(/this example, labelled “[^”]*”/, `this example (next-best), labelled “${counterOverride.label_name}”`) : q.sentence;
    const accept = q.prediction !== q.suspicious.label
      ? `<button type="button" data-cmd="accept">Accept the model's suggestion “${esc(q.prediction_name)}” <kbd>a</kbd></button>` : "";
    main.dataset.queryId = q.id;
    main.innerHTML = `<p class="sentence" id="sentence">${esc(sentence)}</p>
      <div class="pair">${card("suspicious", q.suspicious, q, counter)}${counter ? card("counter", counter, q, null) : ""}</div>
      <div class="actions">
        <button type="button" data-cmd="submit" class="primary">${chosen.suspicious === null && chosen.counter === null ? "Keep both labels" : "Save labels"} <kbd>Enter</kbd></button>
        ${accept}
        <button type="button" data-cmd="skip">Skip <kbd>s</kbd></button>
        <button type="button" data-cmd="undo" ${state.last_decision ? "" : "disabled"}>Undo <kbd>u</kbd></button>
        <button type="button" data-cmd="alternatives" ${q.alternatives.length > 1 ? "" : "disabled"}>Next-best counter-examples <kbd>n</kbd></button>
      </div>
      <div id="alternatives">${alternatives ? alternativesHtml(q) : ""}</div>`;
  }

  function alternativesHtml(q) {
    return `<h3>Top ${alternatives.length} counter-examples</h3><div class="alts">${alternatives.map((a) =>
      `<div class="alt ${(counterOf(q) || {}).id === a.id ? "chosen" : ""}">
        ${a.kind === "image" ? `<img class="alt-img" alt="example ${a.id}" src="${esc(a.image_url)}">` : a.kind === "text" ? `<blockquote class="text small">${esc(a.text.slice(0, 200))}</blockquote>` : `#${a.id}`}
        <div>#${a.rank} · labelled <b>${esc(a.label_name)}</b></div>
        ${a.model ? `<div class="muted">model: ${esc(a.model.prediction_name)} (${pct(a.model.confidence)})</div>` : ""}
        <button type="button" data-cmd="use-alt" data-id="${a.id}">Show this one</button></div>`).join("")}</div>`;
  }

  function renderSkipped() {
    const el = $("#skipped");
    el.hidden = false;
    const items = skipped.map((s) => `<li>#${s.suspicious.id}${s.suspicious.key !== null && s.suspicious.key !== undefined ? ` <span class="muted">key ${esc(s.suspicious.key)}</span>` : ""}
        labelled “${esc(s.suspicious.label_name)}”${s.counter ? `, shown with #${s.counter.id}` : ""}
        <span class="muted">· skipped by ${esc(s.who)}</span>
        <button type="button" data-cmd="revisit" data-id="${s.decision_id}">Revisit</button></li>`).join("");
    el.innerHTML = `<h2>Skipped queries (${skipped.length})</h2>
      ${skipped.length ? `<ul id="skipped-list">${items}</ul>` : "<p>No skipped query.</p>"}
      <button type="button" data-cmd="close-skipped">Close</button>`;
  }

  function setState(next) {
    generation += 1;
    state = next;
    chosen = { suspicious: null, counter: null };
    focus = "suspicious";
    counterOverride = null;
    alternatives = null;
    stale = 0;
    render();
  }

  async function refresh() {
    const { status, data } = await api("GET", "/api/state");
    if (status === 200) setState(data);
  }

  function picksText(q) {
    const parts = [];
    if (chosen.suspicious !== null) parts.push(`#${q.suspicious.id} → “${name(chosen.suspicious)}”`);
    const c = counterOf(q);
    if (chosen.counter !== null && c) parts.push(`#${c.id} → “${name(chosen.counter)}”`);
    return parts.join(", ");
  }

  function conflict(q, data) {
    const d = data.decision;
    const picks = picksText(q), keep = { ...chosen }, old = { suspicious: q.suspicious.id, counter: (counterOf(q) || {}).id };
    let text;
    if (d && d.query_id === q.id) {
      const when = d.at ? new Date(d.at).toLocaleTimeString() : "";
      const by = d.who && !(state.project.per_user && d.who === state.project.user) ? ` by ${d.who}` : "";
      text = `Not saved: this query was already answered${by}${when ? ` at ${when}` : ""} (perhaps in another tab), so your answer was not applied.`;
    } else if (/shown to/.test(data.detail || "")) {
      text = "Not saved: this query was handed to another annotator while you were away, so your answer was not applied.";
    } else {
      text = `Not saved: ${data.detail}`;
    }
    setState(data.state);
    const nq = state.query;
    const now = nq ? { suspicious: nq.suspicious.id, counter: (nq.counter || {}).id } : {};
    let carried = 0, total = 0;
    for (const role of ["suspicious", "counter"]) {
      if (keep[role] === null) continue;
      total += 1;
      if (nq && old[role] !== undefined && old[role] === now[role]) { chosen[role] = keep[role]; carried += 1; }
    }
    if (total) {
      text += carried === total ? " Your picks are kept on the same examples below: check them and save again."
        : ` Your picks were ${picks}; the query shown now is a different one.`;
    }
    render();
    message(text, "warn");
  }

  async function submit(action) {
    const q = state.query;
    if (!q || busy) return;
    busy = true;
    const body = { action };
    if (action === "label" || action === "confirm") {
      if (chosen.suspicious !== null) body.suspicious_label = chosen.suspicious;
      if (chosen.counter !== null) body.counter_label = chosen.counter;
      body.action = body.suspicious_label !== undefined || body.counter_label !== undefined ? "label" : "confirm";
    }
    if (counterOverride) body.counter_index = counterOverride.id;
    const live = $("#live-status");
    if (live) live.textContent = "saving your answer and preparing the next query…";
    try {
      const { status, data } = await api("POST", `/api/queries/${encodeURIComponent(q.id)}/answer`, body);
      if (status === 200) {
        const d = data.decision;
        const parts = [];
        if (d.suspicious_old !== d.suspicious_new) parts.push(`#${d.suspicious}: ${name(d.suspicious_old)} → ${name(d.suspicious_new)}`);
        if (d.counter !== null && d.counter_old !== d.counter_new) parts.push(`#${d.counter}: ${name(d.counter_old)} → ${name(d.counter_new)}`);
        message(d.action === "skip" ? "Skipped (it stays in the skipped list)." : parts.length ? `Saved: ${parts.join(", ")}.` : "Kept both labels as they are.", "ok");
        setState(data.state);
      } else if (status === 409) {
        conflict(q, data);
      } else {
        message(`Not saved (${status}): ${data.detail}`, "error");
      }
    } catch (e) {
      message(`Not saved: the server cannot be reached (${e}). Your picks are kept; try again when it is back.`, "error");
    } finally { busy = false; }
  }

  function accept() {
    const q = state.query;
    if (!q || busy || q.prediction === q.suspicious.label) return;
    chosen.suspicious = q.prediction;
    submit("label");
  }

  async function undo() {
    if (!state.last_decision || busy) return;
    busy = true;
    try {
      const { status, data } = await api("POST", "/api/undo", { decision_id: state.last_decision.id });
      if (status === 200) { message("Undone: that query is shown again.", "ok"); setState(data.state); }
      else if (status === 409) { setState(data.state); message(`Not undone: ${data.detail}`, "warn"); }
      else message(`Undo failed (${status}): ${data.detail}`, "error");
    } finally { busy = false; }
  }

  async function showAlternatives() {
    const q = state.query;
    if (!q) return;
    if (alternatives) { alternatives = null; render(); return; }
    const { status, data } = await api("GET", `/api/queries/${encodeURIComponent(q.id)}/alternatives`);
    if (status === 200) { alternatives = data.alternatives; render(); }
    else message(data.detail, "error");
  }

  async function toggleSkipped(show) {
    const el = $("#skipped");
    if (show === false || (show === undefined && skipped)) { skipped = null; el.hidden = true; el.innerHTML = ""; return; }
    const { status, data } = await api("GET", "/api/skipped");
    if (status !== 200) { message(data.detail, "error"); return; }
    skipped = data.skipped;
    keepingFocus(renderSkipped);
  }

  async function revisit(id) {
    if (busy) return;
    busy = true;
    try {
      const { status, data } = await api("POST", `/api/skipped/${id}/revisit`, {});
      if (status === 200) {
        setState(data.state);
        message("The skipped query is shown again: answer it now.", "ok");
        if (skipped) await toggleSkipped(true);
      } else message(`Cannot revisit (${status}): ${data.detail}`, "warn");
    } finally { busy = false; }
  }

  function pick(role, label) {
    if (!state.query) return;
    if (role === "counter" && !counterOf(state.query)) return;
    chosen[role] = chosen[role] === label ? null : label;
    render();
  }

  function toggleHelp(show) {
    const help = $("#help");
    help.hidden = show === undefined ? !help.hidden : !show;
    if (help.hidden) return;
    const keys = state.project.class_names.map((n, i) => keyFor(i) ? `<dt><kbd>${esc(keyFor(i))}</kbd></dt><dd>label “${esc(n)}” for the focused example (again: clear)</dd>` : "").join("");
    help.innerHTML = `${state.project.instructions ? `<section class="instructions" id="instructions"><h2>Instructions</h2>${state.project.instructions}</section>` : ""}
      <h2>Keys</h2><dl>${keys}
      <dt><kbd>←</kbd> <kbd>→</kbd></dt><dd>focus the suspicious example / the counter-example</dd>
      <dt><kbd>a</kbd></dt><dd>accept the model's suggestion for the suspicious example (and save)</dd>
      <dt><kbd>Enter</kbd></dt><dd>save the picked labels (or keep both labels as they are)</dd>
      <dt><kbd>s</kbd></dt><dd>skip this query (revisit it from “Skipped”)</dd><dt><kbd>u</kbd></dt><dd>undo the last decision</dd>
      <dt><kbd>n</kbd></dt><dd>show the next-best counter-examples</dd>
      <dt><kbd>Tab</kbd> <kbd>Shift</kbd>+<kbd>Tab</kbd></dt><dd>move through every button and link</dd>
      <dt><kbd>?</kbd> <kbd>Esc</kbd></dt><dd>show / hide this help</dd></dl>
      <button type="button" data-cmd="close-help">Close <kbd>Esc</kbd></button>`;
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target, tag = t && t.tagName;
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || (t && t.isContentEditable)) return;
    const onControl = tag === "BUTTON" || tag === "A";
    const k = ev.key;
    if (k === "Tab" || k === " ") return; // the browser's own: focus moves through every control; Space presses it
    if (k === "?") { toggleHelp(); ev.preventDefault(); return; }
    if (k === "Escape") { toggleHelp(false); return; }
    if (k === "Enter") { if (onControl) return; submit("label"); ev.preventDefault(); return; }
    if (k === "ArrowLeft" || k === "ArrowRight") {
      focus = k === "ArrowRight" && counterOf(state.query) ? "counter" : "suspicious";
      render();
      const cardEl = document.querySelector(`.card[data-role="${focus}"]`);
      if (cardEl && document.activeElement && document.activeElement !== document.body) cardEl.focus({ preventScroll: true });
      ev.preventDefault();
      return;
    }
    const low = k.length === 1 ? k.toLowerCase() : k;
    if (low === "u") { undo(); return; }
    if (low === "s") { submit("skip"); return; }
    if (low === "n") { showAlternatives(); return; }
    if (low === "a") { accept(); return; }
    const label = k.length === 1 ? classOfKey(k) : null;
    if (label !== null) { pick(focus, label); ev.preventDefault(); }
  });

  // Tab into a card (or one of its buttons) makes it the example the label keys apply to
  document.addEventListener("focusin", (ev) => {
    const cardEl = ev.target.closest && ev.target.closest(".card");
    if (cardEl && cardEl.dataset.role !== focus) {
      focus = cardEl.dataset.role;
      document.querySelectorAll(".card").forEach((c) => c.classList.toggle("focused", c.dataset.role === focus));
    }
  });

  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button");
    const cardEl = ev.target.closest(".card");
    if (cardEl && focus !== cardEl.dataset.role) { focus = cardEl.dataset.role; }
    if (!btn) { if (cardEl) render(); return; }
    if (btn.dataset.label !== undefined) { pick(btn.dataset.role, +btn.dataset.label); return; }
    const cmd = btn.dataset.cmd;
    if (cmd === "submit") submit("label");
    else if (cmd === "accept") accept();
    else if (cmd === "skip") submit("skip");
    else if (cmd === "undo") undo();
    else if (cmd === "alternatives") showAlternatives();
    else if (cmd === "help") toggleHelp();
    else if (cmd === "close-help") toggleHelp(false);
    else if (cmd === "skipped") toggleSkipped();
    else if (cmd === "close-skipped") toggleSkipped(false);
    else if (cmd === "revisit") revisit(+btn.dataset.id);
    else if (cmd === "use-alt") {
      const id = +btn.dataset.id;
      const alt = alternatives.find((a) => a.id === id);
      counterOverride = state.query.counter && state.query.counter.id === id ? null : alt;
      chosen.counter = null;
      render();
    }
  });

  // live status: retraining, counts, and whether the shown query is still this page's to answer
  async function poll() {
    const asked = generation;
    try {
      const { status, data } = await api("GET", "/api/status");
      if (status === 200 && asked !== generation) {
        // the page moved on while the poll was under way: its answer is about the state before
      } else if (status === 200) {
        const before = state.progress;
        state.progress = data.progress;
        keepingFocus(renderProgress);
        if (!state.query && !busy && (data.query_id || data.progress.open !== before.open || data.progress.answered !== before.answered)) {
          await refresh();
        } else if (state.query && data.query_id !== state.query.id && !busy) {
          stale += 1;
          const picked = chosen.suspicious !== null || chosen.counter !== null;
          if (stale === 1) {
            message("The queue has changed elsewhere (another tab or annotator): this query may already be answered. Saving will tell you; your picks are kept.", "warn");
          } else if (!picked) { // still stale at the next poll and nothing picked: show the current query
            await refresh();
            message("The query shown before was answered or reopened elsewhere (another tab or annotator); this is the current one.", "warn");
          }
        } else {
          stale = 0;
        }
      } else if (status === 401) {
        message("Your token is no longer accepted (revoked?): ask for a new link.", "error");
      }
    } catch (e) { /* the server is away: the next poll tries again */ }
    setTimeout(poll, document.hidden ? 10000 : 2000);
  }

  render();
  if (state.project.instructions) {
    const seen = `cincer-instructions:${state.project.name}:${state.project.instructions.length}`;
    try {
      if (!localStorage.getItem(seen)) { toggleHelp(true); localStorage.setItem(seen, "1"); }
    } catch (e) { toggleHelp(true); }
  }
  setTimeout(poll, 2000);
})();
