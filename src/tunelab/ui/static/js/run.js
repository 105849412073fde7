/* The Run page (and the page `tunelab runs export-html` writes, which inlines this file): loss and learning-rate
   curves from the rows embedded in #run-data with an x-axis switch, followed live through server-sent events
   while the run trains; tabs; long text cells clamped with a toggle; and, in an exported page, the predictions
   table filtered in the browser from #run-predictions. Text is always set with textContent, never as HTML. */
(function () {
  "use strict";

  const FILTERS = {
    all: () => true,
    wrong: (b, t) => t === false,
    flipped: (b, t) => typeof b === "boolean" && typeof t === "boolean" && b !== t,
    fixed: (b, t) => b === false && t === true,
    broken: (b, t) => b === true && t === false,
  };

  function readJson(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function isNumber(v) { return typeof v === "number" && isFinite(v); }

  function formatNumber(v) {
    if (!isNumber(v)) return "-";
    return Number.isInteger(v) ? v.toLocaleString("en-US") : String(Number(v.toPrecision(4)));
  }


  /* ---- curves */
  function curves(data) {
    const state = {rows: data.rows.slice(), x: "step", charts: {}};
    const switcher = document.getElementById("x-axis");

    function fresh(id) {  // a new element per chart, so the old chart's resize observer watches nothing
      const old = document.getElementById(id);
      const el = old.cloneNode(false);
      old.replaceWith(el);
      return el;
    }

    function draw() {
      Object.values(state.charts).forEach(c => { if (c.chart()) c.chart().destroy(); });
      const runs = [{name: data.name, rows: state.rows}];
      state.charts.loss = tunelab.chart(fresh("loss-chart"), runs,
        {x: state.x, metrics: ["loss", "val_loss", "eval_loss"], y: "loss"});
      state.charts.lr = tunelab.chart(fresh("lr-chart"), runs,
        {x: state.x, metrics: ["learning_rate"], y: "learning rate", height: 280});
    }

    function offerAxes() {
      if (!switcher) return;
      switcher.querySelectorAll("button").forEach(b => {
        const key = b.dataset.x;
        b.disabled = key !== "step" && !state.rows.some(r => isNumber(r[key]));
        b.classList.toggle("on", key === state.x);
      });
    }

    function updateStats() {
      const last = state.rows[state.rows.length - 1];
      const losses = state.rows.filter(r => isNumber(r.loss));
      const vals = state.rows.filter(r => isNumber(r.val_loss)).map(r => r.val_loss);
      const set = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };
      if (last) set("stat-step", formatNumber(last.step));
      if (losses.length) set("stat-loss", formatNumber(losses[losses.length - 1].loss));
      if (vals.length) set("stat-val", formatNumber(Math.min(...vals)));
    }

    if (switcher) {
      switcher.addEventListener("click", e => {
        const button = e.target.closest("button[data-x]");
        if (!button || button.disabled || button.dataset.x === state.x) return;
        state.x = button.dataset.x;
        offerAxes();
        draw();
      });
    }
    offerAxes();
    draw();
    state.add = rows => {
      if (!rows.length) return;
      rows.forEach(r => state.rows.push(r));
      const runs = [{name: data.name, rows: state.rows}];
      state.charts.loss.update(runs);
      state.charts.lr.update(runs);
      offerAxes();
      updateStats();
    };
    return state;
  }

  /* "1h 02m", "3m 05s", "12s", as the server writes durations */
  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds)), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    const pad = n => String(n).padStart(2, "0");
    return h ? `${h}h ${pad(m)}m` : m ? `${m}m ${pad(r)}s` : `${r}s`;
  }

  /* ---- live: new rows and the status while the run trains */
  function follow(data, state) {
    const badge = document.getElementById("run-status");
    const live = document.getElementById("live-badge");
    const clocks = document.querySelectorAll("[data-since]");
    const ticking = setInterval(() => clocks.forEach(el => {
      el.textContent = duration(Date.now() / 1000 - Number(el.dataset.since));
    }), 1000);
    const url = data.events + "?offset=" + encodeURIComponent(data.offset);
    tunelab.follow(url, rows => state.add(rows), status => {
      if (status.status === "disconnected") {
        if (live) { live.textContent = "offline"; live.classList.remove("live"); }
        return;
      }
      if (badge) { badge.textContent = status.status; badge.className = "status status-" + status.status; }
      if (status.status !== "running") {
        clearInterval(ticking);
        if (live) live.hidden = true;
        const ended = document.getElementById("run-ended");
        if (ended) ended.hidden = false;
        // a finished run has written its metrics and predictions: show them (a failed one keeps its curves)
        if (status.status === "finished" && ended && ended.dataset.reload !== "off") setTimeout(() => location.reload(), 2000);
      }
    });
  }

  /* ---- tabs */
  function tabs() {
    const bar = document.querySelector(".run-tabs");
    if (!bar) return;
    function show(name) {
      const panel = document.querySelector(`[data-panel="${name}"]`);
      if (!panel) return;
      document.querySelectorAll("[data-panel]").forEach(p => { p.hidden = p !== panel; });
      bar.querySelectorAll("a[data-tab]").forEach(a => a.classList.toggle("active", a.dataset.tab === name));
      clamp(panel);
    }
    bar.addEventListener("click", e => {
      const link = e.target.closest("a[data-tab]");
      if (!link) return;
      e.preventDefault();
      history.replaceState(null, "", "#" + link.dataset.tab);
      show(link.dataset.tab);
    });
    show((location.hash || "#overview").slice(1));
  }

  /* ---- long texts: clamped to a few lines, with a toggle where they overflow */
  function clamp(root) {
    root.querySelectorAll(".clamp").forEach(el => {
      if (el.dataset.measured || !el.clientHeight) return;
      el.dataset.measured = "1";
      if (el.scrollHeight <= el.clientHeight + 2) return;
      const toggle = document.createElement("button");
      toggle.type = "button";
      toggle.className = "link-button clamp-toggle";
      toggle.textContent = "show all";
      el.after(toggle);
    });
  }
  document.addEventListener("click", e => {
    const toggle = e.target.closest(".clamp-toggle");
    if (!toggle) return;
    const el = toggle.previousElementSibling;
    el.classList.toggle("open");
    toggle.textContent = el.classList.contains("open") ? "show less" : "show all";
  });
  document.addEventListener("htmx:afterSwap", e => clamp(e.detail.target));

  /* ---- an exported page's predictions, filtered in the browser */
  function predictionsTable(rows) {
    const body = document.querySelector("#export-predictions tbody");
    const search = document.getElementById("export-search");
    const shown = document.getElementById("export-shown");
    const pills = document.querySelectorAll("#export-filters [data-filter]");
    const hasBase = rows.some(r => r.has_base);
    let current = "all";

    function cell(text, extra) {
      const td = document.createElement("td");
      td.className = "text" + (extra ? " " + extra : "");
      const div = document.createElement("div");
      div.className = "clamp";
      div.textContent = text;
      td.appendChild(div);
      return td;
    }
    function verdict(flag) { return flag === true ? "answer-cell right" : flag === false ? "answer-cell wrong" : ""; }
    function matches(row, words) {
      const text = [row.input, row.reference, row.base, row.tuned].join("\n").toLowerCase();
      return words.every(w => text.includes(w));
    }
    function render() {
      const words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
      const found = rows.filter(r => matches(r, words));
      pills.forEach(p => {
        p.classList.toggle("on", p.dataset.filter === current);
        p.querySelector(".count").textContent = found.filter(r => FILTERS[p.dataset.filter](r.base_correct, r.tuned_correct)).length;
      });
      const picked = found.filter(r => FILTERS[current](r.base_correct, r.tuned_correct));
      body.replaceChildren(...picked.map(r => {
        const tr = document.createElement("tr");
        tr.dataset.item = r.id;
        const id = document.createElement("td");
        id.className = "num muted";
        id.textContent = r.id;
        tr.append(id, cell(r.input), cell(r.reference));
        if (hasBase) tr.append(cell(r.base, verdict(r.base_correct)));
        const tuned = cell(r.tuned, verdict(r.tuned_correct));
        if (r.flip) {
          const badge = document.createElement("span");
          badge.className = "badge " + (r.flip === "fixed" ? "good" : "bad");
          badge.textContent = r.flip;
          tuned.appendChild(badge);
        }
        tr.appendChild(tuned);
        return tr;
      }));
      shown.textContent = picked.length;
      clamp(body);
    }
    pills.forEach(p => p.addEventListener("click", () => { current = p.dataset.filter; render(); }));
    search.addEventListener("input", render);
    render();
  }

  function start() {
    const data = readJson("run-data");
    const page = {};
    if (data && document.getElementById("loss-chart")) {
      page.curves = curves(data);
      if (data.status === "running" && data.events) follow(data, page.curves);
    }
    tabs();
    const predictions = readJson("run-predictions");
    if (predictions && predictions.length && document.getElementById("export-predictions")) predictionsTable(predictions);
    clamp(document);
    window.runPage = page;
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
