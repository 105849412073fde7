/* tunelab dashboard helpers: CSRF for fetch, ticked boxes kept across htmx swaps, and curves drawn with uPlot
   from train_log.jsonl rows ({step, epoch, tokens, loss, learning_rate, val_loss, eval_loss, ...}).
   The same file is inlined into `tunelab runs export-html` pages, so it must not need a server. */
(function () {
  "use strict";

  const PALETTE = ["#4f46e5", "#e4572e", "#17a398", "#f3a712", "#a23b72", "#2e86ab", "#6a994e", "#8d6a9f"];
  const LABELS = {loss: "train loss", val_loss: "validation loss", eval_loss: "eval loss", learning_rate: "learning rate"};
  const X_LABELS = {step: "step", epoch: "epoch", tokens: "trained tokens"};

  function csrf() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function post(url, body) {
    return fetch(url, {method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf()},
                       body: JSON.stringify(body || {}), credentials: "same-origin"});
  }

  function isNumber(v) { return typeof v === "number" && isFinite(v); }

  /* x of a row on the chosen axis; rows without epoch/tokens (validation rows of older logs) borrow them from the
     training row of the same step */
  function xOf(row, xKey, byStep) {
    if (xKey === "step") return row.step;
    if (isNumber(row[xKey])) return row[xKey];
    const known = byStep.get(row.step);
    return known && isNumber(known[xKey]) ? known[xKey] : null;
  }

  /* [[x...], [y of metric 1...], ...] aligned on the union of x, null where a metric has no point */
  function table(rows, xKey, metrics) {
    const byStep = new Map();
    rows.forEach(r => { if (isNumber(r.loss) || isNumber(r.tokens)) byStep.set(r.step, r); });
    const points = new Map();
    rows.forEach(r => {
      if (!isNumber(r.step)) return;
      const x = xOf(r, xKey, byStep);
      if (!isNumber(x)) return;
      const slot = points.get(x) || {};
      metrics.forEach(m => { if (isNumber(r[m])) slot[m] = r[m]; });
      points.set(x, slot);
    });
    const xs = [...points.keys()].sort((a, b) => a - b);
    return [xs, ...metrics.map(m => xs.map(x => (m in points.get(x) ? points.get(x)[m] : null)))];
  }

  function present(rows, metric) { return rows.some(r => isNumber(r[metric])); }

  /* runs: [{name, rows}]; metrics: which columns to draw. Returns [data, series] for uPlot. */
  function build(runs, xKey, metrics) {
    const tables = [], series = [{label: X_LABELS[xKey] || xKey}];
    runs.forEach((run, i) => {
      const shown = metrics.filter(m => present(run.rows, m));
      if (!shown.length) return;
      tables.push(table(run.rows, xKey, shown));
      shown.forEach((m, k) => {
        const label = runs.length > 1 ? `${run.name} · ${LABELS[m] || m}` : (LABELS[m] || m);
        const color = runs.length > 1 ? PALETTE[i % PALETTE.length] : PALETTE[k % PALETTE.length];
        const s = {label, stroke: color, width: 1.6, spanGaps: true,
                   value: (u, v) => (v == null ? "-" : Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : v.toPrecision(4))};
        if (m === "val_loss" || m === "eval_loss") {
          Object.assign(s, {dash: [6, 4], width: 2, points: {show: true, size: 6, stroke: color, fill: "#fff"}});
        }
        series.push(s);
      });
    });
    if (!tables.length) return [null, series];
    const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    return [data, series];
  }

  /* A chart in `el` that redraws itself from `runs` on update(); returns {update(runs), chart()}. */
  function chart(el, runs, options) {
    const opts = Object.assign({x: "step", metrics: ["loss", "val_loss", "eval_loss"], height: 280, y: "loss"}, options || {});
    let plot = null, labels = "";
    function draw(current) {
      const [data, series] = build(current, opts.x, opts.metrics);
      if (!data) {
        if (plot) { plot.destroy(); plot = null; }
        el.innerHTML = '<div class="empty muted small">No ' + (opts.y || "points") + " logged yet.</div>";
        labels = "";
        return;
      }
      const signature = series.map(s => s.label).join("|");
      if (plot && signature === labels) { plot.setData(data); return; }
      if (plot) plot.destroy();
      el.innerHTML = "";
      labels = signature;
      plot = new uPlot({
        width: Math.max(320, el.clientWidth || 640), height: opts.height, series,
        scales: {x: {time: false}, y: opts.log ? {distr: 3} : {}},
        axes: [{label: X_LABELS[opts.x] || opts.x, stroke: "#687082", grid: {stroke: "#eef0f4"}},
               {label: opts.y, stroke: "#687082", grid: {stroke: "#eef0f4"}, size: 60,
                values: (u, splits) => splits.map(v => (v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential(1).replace(".0e", "e") : v))}],
        cursor: {drag: {x: true, y: false}},
      }, data, el);
    }
    draw(runs);
    if (window.ResizeObserver) {
      new ResizeObserver(() => { if (plot) plot.setSize({width: Math.max(320, el.clientWidth), height: opts.height}); }).observe(el);
    }
    return {update: draw, chart: () => plot, options: opts};
  }

  /* Follow a run's server-sent events: "rows" (new train_log rows, JSON list) and "status" (JSON). */
  function follow(url, onRows, onStatus) {
    const source = new EventSource(url, {withCredentials: true});
    source.addEventListener("rows", e => onRows(JSON.parse(e.data)));
    source.addEventListener("status", e => {
      const status = JSON.parse(e.data);
      if (onStatus) onStatus(status);
      if (status.status !== "running") source.close();
    });
    source.onerror = () => { if (source.readyState === EventSource.CLOSED && onStatus) onStatus({status: "disconnected"}); };
    return source;
  }

  /* Ticked checkboxes survive htmx re-rendering a polled table. */
  let ticked = null;
  document.addEventListener("htmx:beforeSwap", e => {
    ticked = new Set([...e.detail.target.querySelectorAll("input[type=checkbox]:checked")].map(b => b.value));
  });
  document.addEventListener("htmx:afterSwap", e => {
    if (!ticked) return;
    e.detail.target.querySelectorAll("input[type=checkbox]").forEach(b => { if (ticked.has(b.value)) b.checked = true; });
    ticked = null;
  });

  window.tunelab = {csrf, post, table, build, chart, follow, LABELS, PALETTE};
})();
