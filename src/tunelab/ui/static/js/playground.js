/* The Playground: one stream per ticked model, opened at once, so the columns fill in side by side.
   The dashboard relays each model's server-sent events ("data: {chunk}" lines, "data: [DONE]" at the end,
   "data: {error}" when the server refused); text goes into the page with textContent only (answers are
   user content).
   A trainer's "Load a model into the server" form posts {name, source} to the dashboard, which asks the server to
   load it; the answer carries the served models, and the list of models is redrawn with the new one ticked. */
(function () {
  "use strict";

  const load = document.getElementById("pg-load");
  if (!load || !load.elements.source) return;
  const select = load.elements.source;
  const nameField = load.elements.name;
  const button = load.querySelector("button[type=submit]");
  const message = load.querySelector(".pg-load-message");
  let suggested = nameField.value;

  function servedNames() {
    return new Set([...document.querySelectorAll("input[name=model]")].map(box => box.value));
  }

  /* The chosen model's name, or NAME-vN (NAME-2, -3... for a run) when a model of that name is served already. */
  function freeName(option) {
    const served = servedNames();
    const name = option.dataset.name;
    if (!served.has(name)) return name;
    if (option.dataset.version && !served.has(name + "-v" + option.dataset.version)) return name + "-v" + option.dataset.version;
    for (let n = 2; ; n += 1) if (!served.has(name + "-" + n)) return name + "-" + n;
  }

  /* A new suggestion replaces the name field's text unless someone typed their own name into it. */
  function suggest() {
    const option = select.selectedOptions[0];
    if (!option) return;
    if (nameField.value.trim() && nameField.value !== suggested) return;
    suggested = nameField.value = freeName(option);
  }

  function say(text, kind) {
    message.textContent = text;
    message.className = "pg-load-message alert " + kind;
    message.hidden = false;
  }

  function modelRow(model) {
    const node = document.getElementById("pg-model").content.firstElementChild.cloneNode(true);
    const box = node.querySelector("input");
    box.value = model.id;
    box.dataset.kind = model.kind;
    node.title = model.id + (model.version && model.kind !== "base" ? " (version " + model.version + ")" : "");
    node.querySelector(".pg-model-name").textContent = model.id;
    const badge = node.querySelector(".badge");
    badge.textContent = model.kind;
    if (model.kind === "adapter") badge.classList.add("alias");
    return node;
  }

  /* The served models, as the page lists them, with the ticked ones still ticked and `loaded` ticked too. */
  function redraw(models, loaded) {
    const list = document.querySelector(".pg-models");
    if (!list) { window.location.reload(); return; }  // the page had no model to list: draw it anew
    const ticked = new Set([...list.querySelectorAll("input[name=model]:checked")].map(box => box.value));
    ticked.add(loaded);
    list.querySelectorAll(".pg-model").forEach(row => row.remove());
    models.forEach(model => {
      const row = modelRow(model);
      row.querySelector("input").checked = ticked.has(model.id);
      list.appendChild(row);
    });
    const served = document.getElementById("pg-served");  // "N models served by <server>": its first text node
    if (served) served.firstChild.textContent = models.length + (models.length === 1 ? " model" : " models") + " served by ";
    const row = list.querySelector(`input[value="${CSS.escape(loaded)}"]`);
    if (row) row.closest(".pg-model").scrollIntoView({block: "nearest"});
  }

  async function submit() {
    const body = {name: nameField.value.trim(), source: select.value};
    button.disabled = true;
    say("Loading " + body.source + " as " + body.name + "…", "warn");
    try {
      const answer = await tunelab.post(load.dataset.load, body);
      const reply = await answer.json().catch(() => null);
      if (!answer.ok) {
        say((reply && reply.error && reply.error.message) || "the dashboard answered " + answer.status, "error");
        return;
      }
      const loaded = reply.loaded.id + (reply.loaded.version ? " (" + reply.loaded.version + ")" : "");
      if (reply.problem) { say("Loaded " + loaded + ", but the model list did not come back: " + reply.problem, "warn"); return; }
      say("Loaded " + loaded + ": it is ticked in the model list.", "ok");
      redraw(reply.models, reply.loaded.id);
      suggest();
    } catch (err) {
      say("the dashboard did not answer: " + err.message, "error");
    } finally {
      button.disabled = false;
    }
  }

  select.addEventListener("change", suggest);
  load.addEventListener("submit", event => { event.preventDefault(); submit(); });
  suggest();
})();

(function () {
  "use strict";

  const form = document.getElementById("playground");
  if (!form) return;
  const answers = document.getElementById("pg-answers");
  const columnTemplate = document.getElementById("pg-column");
  const send = document.getElementById("pg-send");
  const stop = document.getElementById("pg-stop");
  const hint = document.getElementById("pg-hint");
  const hintText = hint.textContent;
  let running = [];

  function numberField(name, parse) {
    const text = form.elements[name].value.trim();
    if (text === "") return null;
    const value = parse(text);
    return Number.isFinite(value) ? value : null;
  }

  function request(model) {
    const messages = [];
    const system = form.elements.system.value;
    if (system.trim()) messages.push({role: "system", content: system});
    messages.push({role: "user", content: form.elements.user.value});
    return {model, messages, temperature: numberField("temperature", parseFloat), top_p: numberField("top_p", parseFloat),
            max_tokens: numberField("max_tokens", t => parseInt(t, 10)), seed: numberField("seed", t => parseInt(t, 10))};
  }

  function ticked() {
    return [...form.querySelectorAll("input[name=model]:checked")].map(box => ({id: box.value, kind: box.dataset.kind}));
  }

  function column(model) {
    const node = columnTemplate.content.firstElementChild.cloneNode(true);
    node.dataset.model = model.id;
    node.querySelector(".pg-name").textContent = model.id;
    node.querySelector(".pg-kind").textContent = model.kind;
    if (model.kind === "adapter") node.querySelector(".pg-kind").classList.add("alias");
    answers.appendChild(node);
    const part = selector => node.querySelector(selector);
    return {node, text: part(".pg-text"), state: part(".pg-state"), ttft: part(".pg-ttft"), speed: part(".pg-speed"),
            tokens: part(".pg-tokens"), error: part(".pg-error"), rating: part(".pg-rating"), rated: part(".pg-rated"),
            id: part(".pg-id")};
  }

  function setState(col, state, label) {
    col.node.dataset.state = state;
    col.state.className = "status pg-state status-" + ({streaming: "running", done: "finished"}[state] || "failed");
    col.state.textContent = label || state;
  }

  function fail(col, message) {
    col.error.textContent = message;
    col.error.hidden = false;
    if (!col.text.textContent) col.text.hidden = true;
    setState(col, "error", "error");
  }

  function milliseconds(ms) { return ms < 1000 ? Math.round(ms) + " ms" : (ms / 1000).toFixed(2) + " s"; }

  /* Reads one column's stream to its end; returns nothing, fills the column as chunks arrive. */
  async function stream(model) {
    const col = column(model);
    const controller = new AbortController();
    running.push(controller);
    setState(col, "streaming");
    const started = performance.now();
    const seen = {first: null, tokens: 0, usage: null, id: null, finish: null, failed: false};

    function showStats() {
      const now = performance.now();
      if (seen.first !== null) col.ttft.textContent = milliseconds(seen.first - started);
      const tokens = seen.usage ? seen.usage.completion_tokens : seen.tokens;
      col.tokens.textContent = tokens;
      const seconds = seen.first === null ? 0 : (now - seen.first) / 1000;
      if (tokens > 1 && seconds > 0) col.speed.textContent = ((tokens - 1) / seconds).toFixed(1) + " tok/s";
    }

    function handle(line) {
      if (!line.startsWith("data:")) return;
      const data = line.slice(5).trim();
      if (data === "[DONE]") return;
      let chunk;
      try { chunk = JSON.parse(data); } catch (err) { return; }
      if (chunk.error) { seen.failed = true; fail(col, chunk.error.message || "the server failed"); return; }
      seen.id = chunk.id || seen.id;
      if (chunk.usage) seen.usage = chunk.usage;
      (chunk.choices || []).forEach(choice => {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (seen.first === null) seen.first = performance.now();
          seen.tokens += 1;
          col.text.textContent += piece;
        }
        if (choice.finish_reason) seen.finish = choice.finish_reason;
      });
      showStats();
    }

    try {
      const response = await fetch(form.dataset.stream, {
        method: "POST", credentials: "same-origin", signal: controller.signal,
        headers: {"Content-Type": "application/json", "X-CSRF-Token": tunelab.csrf()},
        body: JSON.stringify(request(model.id))});
      if (!response.ok) {
        const body = await response.json().catch(() => null);
        fail(col, (body && body.error && body.error.message) || "the dashboard answered " + response.status);
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n")) >= 0) {
          handle(buffer.slice(0, cut).trim());
          buffer = buffer.slice(cut + 1);
        }
      }
      handle(buffer.trim());
    } catch (err) {
      if (err.name === "AbortError") { setState(col, "stopped", "stopped"); return; }
      fail(col, "the stream broke off: " + err.message);
      return;
    } finally {
      running = running.filter(c => c !== controller);
      if (!running.length) idle();
    }
    if (seen.failed) return;
    showStats();
    if (!col.text.textContent) col.text.classList.add("pg-nothing");
    setState(col, "done", seen.finish === "length" ? "done · max_tokens" : "done");
    offerRating(col, seen.id);
  }

  function offerRating(col, responseId) {
    if (!responseId || !form.dataset.feedback) return;
    col.rating.hidden = false;
    col.id.textContent = responseId;
    col.rating.querySelectorAll("button").forEach(button => button.addEventListener("click", async () => {
      const answer = await tunelab.post(form.dataset.feedback, {response_id: responseId, rating: button.dataset.rating});
      const body = await answer.json().catch(() => null);
      if (answer.ok) {
        col.rating.querySelectorAll("button").forEach(b => b.classList.toggle("chosen", b === button));
        col.rated.textContent = "recorded";
      } else {
        col.rated.textContent = (body && body.error && body.error.message) || "not recorded";
      }
    }));
  }

  function idle() {
    send.disabled = false;
    stop.disabled = true;
  }

  function start() {
    const models = ticked();
    if (!models.length) { hint.textContent = "Tick at least one model."; return; }
    if (!form.elements.user.value.trim()) { hint.textContent = "Write a user message first."; form.elements.user.focus(); return; }
    hint.textContent = hintText;
    running.forEach(c => c.abort());
    answers.innerHTML = "";
    answers.style.setProperty("--columns", Math.min(models.length, 4));
    send.disabled = true;
    stop.disabled = false;
    models.forEach(model => stream(model));
  }

  form.addEventListener("submit", event => { event.preventDefault(); start(); });
  form.elements.user.addEventListener("keydown", event => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); start(); }
  });
  stop.addEventListener("click", () => running.forEach(c => c.abort()));
})();
