// cincer annotation page: keyboard first, mouse too. Talks to /api/* only.
"use strict";
(function () {
  const LETTERS = "abcdefghijklmopqrtvwxyz"; // n, s and u are commands
  let state = JSON.parse(document.getElementById("initial-state").textContent);
  let chosen = { suspicious: null, counter: null };
  let focus = "suspicious";
  let counterOverride = null; // an alternative counter-example picked by the user
  let alternatives = null;
  let busy = false;

  const $ = (sel) => document.querySelector(sel);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const keyFor = (i) => (i < 10 ? String(i) : LETTERS[i - 10] || null);
  const classOfKey = (k) => {
    const n = state.project.class_names.length;
    for (let i = 0; i < n; i++) if (keyFor(i) === k) return i;
    return null;
  };

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

  function renderProgress() {
    const p = state.progress;
    const pct = p.total ? (100 * p.seen) / p.total : 100;
    $("#progress").innerHTML = `
      <div class="bar" title="${p.seen} of ${p.total} examples seen"><div style="width:${pct.toFixed(1)}%"></div></div>
      <span><b id="n-answered">${p.answered}</b> queries answered</span>
      <span><b id="n-changed">${p.labels_changed}</b> labels changed</span>
      <span><b id="n-seen">${p.seen}</b>/${p.total} examples seen</span>
      <span class="muted">${p.retraining ? "retraining…" : "model v" + p.model_version}</span>
      ${f1Chart(p.f1)}`;
  }

  function exampleBody(ex, other, highlight) {
    if (ex.kind === "image") return `<img class="example-img" alt="example ${ex.id}" src="${ex.image_url}">`;
    if (ex.kind === "text") return `<blockquote class="text">${esc(ex.text)}</blockquote>`;
    const hl = new Set(highlight || []);
    const rows = ex.features.map((f, i) => ({ f, i })).sort((a, b) => (hl.has(b.i) ? 1 : 0) - (hl.has(a.i) ? 1 : 0)).slice(0, 40);
    const head = other ? `<thead><tr><th></th><th>this</th><th class="muted">counter</th></tr></thead>` : "";
    return `<table class="features">${head}<tbody>${rows.map(({ f, i }) =>
      `<tr class="${hl.has(i) ? "hl" : ""}"><th>${esc(f.name)}</th><td>${fmt(f.value)}</td>${other ? `<td class="muted">${fmt(other.features[i].value)}</td>` : ""}</tr>`).join("")}</tbody></table>`;
  }
  const fmt = (v) => (Math.abs(v) >= 1000 || (Math.abs(v) < 0.01 && v !== 0) ? v.toExponential(2) : (+v.toFixed(3)).toString());

  function labelButtons(role, ex) {
    return `<div class="labels" role="group" aria-label="label of the ${role} example">${state.project.class_names.map((name, i) => {
      const k = keyFor(i);
      const cls = [chosen[role] === i ? "chosen" : "", ex.label === i ? "current" : ""].join(" ");
      const text = k === name ? esc(name) : `${k ? `<kbd>${esc(k)}</kbd> ` : ""}${esc(name)}`;
      return `<button type="button" class="${cls}" data-role="${role}" data-label="${i}" title="label ${esc(name)}">${text}</button>`;
    }).join("")}</div>`;
  }

  function card(role, ex, q, other) {
    const title = role === "suspicious" ? "Suspicious example" : "Counter-example";
    const model = role === "suspicious"
      ? `<div class="model">model: <b>${esc(q.prediction_name)}</b> (${(100 * q.confidence).toFixed(0)}%), your label: ${(100 * q.label_confidence).toFixed(0)}%</div>` : "";
    const pick = chosen[role] === null ? "" : ` → <b class="new-label">${esc(state.project.class_names[chosen[role]])}</b>`;
    return `<section class="card ${focus === role ? "focused" : ""}" data-role="${role}" data-example="${ex.id}">
      <h2>${title} <span class="muted">#${ex.id}</span></h2>
      ${exampleBody(ex, role === "suspicious" ? other : null, q.highlight)}
      <div class="current-label">label: <b>${esc(ex.label_name)}</b>${pick}</div>${model}
      ${labelButtons(role, ex)}</section>`;
  }

  function render() {
    renderProgress();
    const main = $("#main");
    const q = state.query;
    if (!q) {
      main.dataset.queryId = "";
      main.innerHTML = `<p class="done">No more suspicious examples: every example has been seen. Export the cleaned labels with <code>cincer export</code>.</p>
        ${state.last_decision ? `<button type="button" data-cmd="undo">Undo last decision (u)</button>` : ""}`;
      return;
    }
    const counter = counterOverride ? counterOverride : q.counter;
    main.dataset.queryId = q.id;
    main.innerHTML = `<p class="sentence" id="sentence">${esc(counterOverride ? q.sentence.replace(/this example you labelled/, "this example (next-best) you labelled") : q.sentence)}</p>
      <div class="pair">${card("suspicious", q.suspicious, q, counter)}${counter ? card("counter", counter, q, null) : ""}</div>
      <div class="actions">
        <button type="button" data-cmd="submit" class="primary">${chosen.suspicious === null && chosen.counter === null ? "Confirm both" : "Save labels"} <kbd>Enter</kbd></button>
        <button type="button" data-cmd="skip">Skip <kbd>s</kbd></button>
        <button type="button" data-cmd="undo" ${state.last_decision ? "" : "disabled"}>Undo <kbd>u</kbd></button>
        <button type="button" data-cmd="alternatives" ${q.alternatives.length > 1 ? "" : "disabled"}>Next-best counter-examples <kbd>n</kbd></button>
      </div>
      <div id="alternatives">${alternatives ? alternativesHtml(q) : ""}</div>`;
  }

  function alternativesHtml(q) {
    return `<h3>Top ${alternatives.length} counter-examples</h3><div class="alts">${alternatives.map((a) =>
      `<div class="alt ${((counterOverride || q.counter) || {}).id === a.id ? "chosen" : ""}">
        ${a.kind === "image" ? `<img class="alt-img" alt="example ${a.id}" src="${a.image_url}">` : a.kind === "text" ? `<blockquote class="text small">${esc(a.text.slice(0, 200))}</blockquote>` : `#${a.id}`}
        <div>#${a.rank} · label <b>${esc(a.label_name)}</b></div>
        <button type="button" data-cmd="use-alt" data-id="${a.id}">Show this one</button></div>`).join("")}</div>`;
  }

  function setState(next) {
    state = next;
    chosen = { suspicious: null, counter: null };
    focus = "suspicious";
    counterOverride = null;
    alternatives = null;
    render();
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
    try {
      const { status, data } = await api("POST", `/api/queries/${q.id}/answer`, body);
      if (status === 200) {
        const d = data.decision;
        const parts = [];
        if (d.suspicious_old !== d.suspicious_new) parts.push(`#${d.suspicious}: ${name(d.suspicious_old)} → ${name(d.suspicious_new)}`);
        if (d.counter !== null && d.counter_old !== d.counter_new) parts.push(`#${d.counter}: ${name(d.counter_old)} → ${name(d.counter_new)}`);
        message(d.action === "skip" ? "Skipped." : parts.length ? `Saved: ${parts.join(", ")}.` : "Confirmed both labels.", "ok");
        setState(data.state);
      } else if (status === 409) {
        message(data.detail, "warn");
        setState(data.state);
      } else {
        message(`Not saved (${status}): ${data.detail}`, "error");
      }
    } catch (e) {
      message(`Not saved: the server cannot be reached (${e}). Reload when it is back.`, "error");
    } finally { busy = false; }
  }
  const name = (i) => state.project.class_names[i];

  async function undo() {
    if (!state.last_decision || busy) return;
    busy = true;
    try {
      const { status, data } = await api("POST", "/api/undo", { decision_id: state.last_decision.id });
      if (status === 200) { message("Undone: that query is shown again.", "ok"); setState(data.state); }
      else if (status === 409) { message(data.detail, "warn"); setState(data.state); }
      else message(`Undo failed (${status}): ${data.detail}`, "error");
    } finally { busy = false; }
  }

  async function showAlternatives() {
    const q = state.query;
    if (!q) return;
    if (alternatives) { alternatives = null; render(); return; }
    const { status, data } = await api("GET", `/api/queries/${q.id}/alternatives`);
    if (status === 200) { alternatives = data.alternatives; render(); }
    else message(data.detail, "error");
  }

  function pick(role, label) {
    if (!state.query) return;
    if (role === "counter" && !(counterOverride || state.query.counter)) return;
    chosen[role] = chosen[role] === label ? null : label;
    render();
  }

  function toggleHelp(show) {
    const help = $("#help");
    help.hidden = show === undefined ? !help.hidden : !show;
    help.innerHTML = `<h3>Keys</h3><dl>
      ${state.project.class_names.map((n, i) => keyFor(i) ? `<dt><kbd>${esc(keyFor(i))}</kbd></dt><dd>label “${esc(n)}” for the focused example</dd>` : "").join("")}
      <dt><kbd>Tab</kbd> <kbd>←</kbd> <kbd>→</kbd></dt><dd>focus the suspicious example / the counter-example</dd>
      <dt><kbd>Enter</kbd></dt><dd>save the picked labels (or confirm both as they are)</dd>
      <dt><kbd>s</kbd></dt><dd>skip this query</dd><dt><kbd>u</kbd></dt><dd>undo the last decision</dd>
      <dt><kbd>n</kbd></dt><dd>show the next-best counter-examples</dd><dt><kbd>?</kbd> <kbd>Esc</kbd></dt><dd>show / hide this help</dd></dl>`;
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const k = ev.key;
    if (k === "?") { toggleHelp(); ev.preventDefault(); return; }
    if (k === "Escape") { toggleHelp(false); return; }
    if (k === "Enter") { submit("label"); ev.preventDefault(); return; }
    if (k === "Tab" || k === "ArrowLeft" || k === "ArrowRight") {
      const hasCounter = state.query && (counterOverride || state.query.counter);
      focus = k === "ArrowLeft" || !hasCounter ? "suspicious" : k === "ArrowRight" ? "counter" : focus === "suspicious" ? "counter" : "suspicious";
      render(); ev.preventDefault(); return;
    }
    if (k === "u") { undo(); return; }
    if (k === "s") { submit("skip"); return; }
    if (k === "n") { showAlternatives(); return; }
    const label = classOfKey(k.toLowerCase());
    if (label !== null) pick(focus, label);
  });

  document.addEventListener("click", async (ev) => {
    const btn = ev.target.closest("button");
    const cardEl = ev.target.closest(".card");
    if (cardEl && focus !== cardEl.dataset.role) { focus = cardEl.dataset.role; }
    if (!btn) { if (cardEl) render(); return; }
    if (btn.dataset.label !== undefined) { pick(btn.dataset.role, +btn.dataset.label); return; }
    const cmd = btn.dataset.cmd;
    if (cmd === "submit") submit("label");
    else if (cmd === "skip") submit("skip");
    else if (cmd === "undo") undo();
    else if (cmd === "alternatives") showAlternatives();
    else if (cmd === "use-alt") {
      const id = +btn.dataset.id;
      const alt = alternatives.find((a) => a.id === id);
      counterOverride = state.query.counter && state.query.counter.id === id ? null : alt;
      chosen.counter = null;
      render();
    }
  });

  render();
})();
