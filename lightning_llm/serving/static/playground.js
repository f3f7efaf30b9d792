// The playground: a client of the server's public API, like any other. It reads /v1/models (and
// /v1/templates when the server has it), then sends /v1/chat/completions or /v1/completions with
// `stream: true` and renders the server-sent events as they arrive. Every piece of text that comes
// from the model, a citation or an error goes into the page through textContent, never as HTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  const state = {
    mode: "chat",
    model: null,         // the served model's id (from /v1/models)
    history: [],         // the chat so far: [{role, content}]
    templates: null,     // [{name, default}] or null when the server has no /v1/templates
    ragIndex: null,      // the index the server retrieves from, or null
    connects: 0,         // connect() calls so far: only the latest one's answer counts
    controller: null,    // the AbortController of the request in flight
  };

  class APIFailure extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  function apiUrl(path) {
    return new URL(path, document.baseURI).toString(); // relative: works behind a proxy's path prefix too
  }

  function headers(json) {
    const out = {};
    if (json) out["Content-Type"] = "application/json";
    const key = $("api-key").value.trim();
    if (key) out["Authorization"] = "Bearer " + key;
    return out;
  }

  async function failure(resp) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) message = `${resp.status}: ${body.error.message}`;
    } catch (_) {
      // not an OpenAI error body: the status line says enough
    }
    return new APIFailure(resp.status, message);
  }

  function showError(err) {
    const box = $("error");
    box.textContent = err instanceof Error ? err.message : String(err);
    box.hidden = false;
  }

  function clearError() {
    $("error").textContent = "";
    $("error").hidden = true;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  // --- connecting: the model, whether a key is needed, templates and retrieval -----------------

  async function connect() {
    const call = ++state.connects;
    clearError();
    let resp;
    try {
      resp = await fetch(apiUrl("v1/models"), { headers: headers(false) });
      if (call !== state.connects) return; // a newer call (another key) is under way
    } catch (err) {
      $("model").textContent = "server unreachable";
      showError(err);
      return;
    }
    const keyGiven = $("api-key").value.trim() !== "";
    if (resp.status === 401) {
      state.model = null;
      $("key-box").hidden = false;
      $("model").textContent = "API key required";
      $("key-note").textContent = "This server needs an API key (sent as Authorization: Bearer).";
      if (keyGiven) showError(await failure(resp));
      else setStatus("Enter the API key to start.");
      return;
    }
    if (!resp.ok) {
      showError(await failure(resp));
      return;
    }
    const model = (await resp.json()).data[0];
    if (call !== state.connects) return;
    state.model = model.id;
    $("model").textContent = `${model.id} · context ${model.max_model_len} tokens`;
    const slider = $("max-tokens");
    slider.max = String(Math.max(1, Math.min(model.max_model_len, 1024)));
    if (Number(slider.value) > Number(slider.max)) slider.value = slider.max;
    showValue("max-tokens");
    if (keyGiven) {
      $("key-note").textContent = "Key accepted.";
    } else {
      $("key-box").hidden = true; // keys are off: nothing to enter
    }
    try {
      await loadTemplates();
    } catch (err) {
      showError(err);
    }
    if (call === state.connects) setStatus("Ready.");
  }

  async function loadTemplates() {
    const resp = await fetch(apiUrl("v1/templates"), { headers: headers(false) });
    if (resp.status === 404) { // an older server: no template choice, no retrieval
      state.templates = null;
      state.ragIndex = null;
      $("template-box").hidden = true;
      $("rag-box").hidden = true;
      return;
    }
    if (!resp.ok) {
      showError(await failure(resp));
      return;
    }
    const body = await resp.json();
    state.templates = body.data || [];
    state.ragIndex = body.rag_index || null;
    const select = $("template");
    select.replaceChildren();
    for (const t of state.templates) {
      const option = document.createElement("option");
      option.value = t.name;
      option.textContent = t.default ? `${t.name} (default)` : t.name;
      option.selected = Boolean(t.default);
      select.append(option);
    }
    $("template-box").hidden = state.templates.length === 0;
    $("rag-box").hidden = false;
    $("rag").disabled = state.ragIndex === null;
    if (state.ragIndex === null) $("rag").checked = false;
    $("rag-note").textContent = state.ragIndex === null
      ? "No index on this server (start it with rag.index=<name>)."
      : `Index: ${state.ragIndex}`;
    applyMode();
  }

  // --- the request --------------------------------------------------------------------------------

  function sampling() {
    return {
      temperature: Number($("temperature").value),
      top_p: Number($("top-p").value),
      max_tokens: Number($("max-tokens").value),
      stream: true,
      stream_options: { include_usage: true },
    };
  }

  function chatBody() {
    const messages = [];
    const system = $("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...state.history);
    const body = { model: state.model, messages, ...sampling() };
    // Extension fields go out only when the server offers them (its request models are strict).
    if (state.templates) {
      const chosen = state.templates.find((t) => t.name === $("template").value);
      if (chosen && !chosen.default) body.template = chosen.name;
    }
    if (state.ragIndex !== null && $("rag").checked) body.rag = { top_k: Number($("top-k").value) };
    return body;
  }

  // Server-sent events (https://html.spec.whatwg.org/multipage/server-sent-events.html): lines
  // up to a blank line make one event; its `data:` lines, joined by newlines, are the payload.
  async function* events(resp) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, cut);
        buffer = buffer.slice(cut + (buffer.startsWith("\r\n", cut) ? 2 : 1));
        if (line === "") {
          if (data.length) {
            const payload = data.join("\n");
            data = [];
            if (payload === "[DONE]") return;
            yield JSON.parse(payload);
          }
        } else if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        } // other fields (event:, id:, retry:) and comments are not used by this API
      }
    }
    throw new Error("the stream ended before [DONE]");
  }

  // Sends one streamed request; calls onText(piece) per text piece and onCitations(list) once.
  async function stream(path, body, { onText, onCitations }) {
    const controller = new AbortController();
    state.controller = controller;
    busy(true);
    setStatus("Sending...");
    const started = performance.now();
    let first = null;
    let chunks = 0;
    let usage = null;
    let finish = null;
    try {
      const resp = await fetch(apiUrl(path), {
        method: "POST", headers: headers(true), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!resp.ok) throw await failure(resp);
      setStatus("Generating...");
      for await (const event of events(resp)) {
        if (event.error) throw new APIFailure(0, event.error.message || "the server reported an error");
        if (event.citations) onCitations(event.citations);
        if (event.usage) usage = event.usage;
        for (const choice of event.choices || []) {
          const piece = choice.delta ? choice.delta.content : choice.text;
          if (piece) {
            if (first === null) first = performance.now() - started;
            chunks += 1;
            onText(piece);
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      const seconds = (performance.now() - started) / 1000;
      const parts = [`${plural(chunks, "chunk")} in ${seconds.toFixed(2)} s`];
      if (usage) parts.push(`${usage.completion_tokens} tokens (${(usage.completion_tokens / seconds).toFixed(1)}/s)`);
      if (first !== null) parts.push(`first after ${Math.round(first)} ms`);
      if (finish) parts.push(`finish: ${finish}`);
      setStatus("Done: " + parts.join(" · ") + ".");
      return "done";
    } catch (err) {
      if (err.name === "AbortError") {
        setStatus(`Stopped after ${plural(chunks, "chunk")}.`);
        return "stopped";
      }
      setStatus("Failed.");
      showError(err);
      return "failed";
    } finally {
      state.controller = null;
      busy(false);
    }
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function busy(on) {
    for (const id of ["send", "generate", "clear"]) $(id).disabled = on;
    $("stop").disabled = !on;
  }

  // --- rendering ------------------------------------------------------------------------------------

  function turn(role, text) {
    const div = document.createElement("div");
    div.className = `turn ${role}`;
    const who = document.createElement("div");
    who.className = "role";
    who.textContent = role;
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    div.append(who, body);
    const box = $("conversation");
    box.append(div);
    box.scrollTop = box.scrollHeight;
    return div;
  }

  // Runs change(), then keeps a scrolled box at its bottom if it was there (reading back up stays put).
  function follow(box, change) {
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
    change();
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  function renderCitations(container, citations) {
    container.replaceChildren();
    if (!citations.length) return;
    const title = document.createElement("div");
    title.className = "citations-title";
    title.textContent = `Sources (${citations.length})`;
    const list = document.createElement("ol");
    list.className = "citations";
    for (const [i, c] of citations.entries()) {
      const item = document.createElement("li");
      const details = document.createElement("details");
      details.open = i === 0;
      const summary = document.createElement("summary");
      const where = document.createElement("span");
      where.className = "source";
      const lines = Array.isArray(c.lines) ? ` lines ${c.lines[0]}-${c.lines[1]}` : "";
      where.textContent = `${c.source}${lines}`;
      const score = document.createElement("span");
      score.className = "score muted";
      score.textContent = typeof c.score === "number" ? ` score ${c.score.toFixed(2)}` : "";
      summary.append(where, score);
      const passage = document.createElement("blockquote");
      passage.textContent = c.text;
      details.append(summary, passage);
      item.append(details);
      list.append(item);
    }
    container.append(title, list);
  }

  async function sendChat(event) {
    event.preventDefault();
    const box = $("message");
    const text = box.value.trim();
    if (!text || state.controller) return;
    if (!state.model) {
      await connect();
      if (!state.model) return;
    }
    clearError();
    box.value = "";
    state.history.push({ role: "user", content: text });
    const userTurn = turn("user", text);
    const answer = turn("assistant", "");
    const output = answer.querySelector(".text");
    const citations = document.createElement("div");
    citations.className = "citations-box";
    answer.append(citations);
    let reply = "";
    const outcome = await stream("v1/chat/completions", chatBody(), {
      onText: (piece) => { reply += piece; follow($("conversation"), () => { output.textContent = reply; }); },
      onCitations: (list) => follow($("conversation"), () => renderCitations(citations, list)),
    });
    if (outcome === "failed" && reply === "") { // nothing came back: as if never sent, ready to retry
      state.history.pop();
      userTurn.remove();
      answer.remove();
      box.value = text;
      return;
    }
    state.history.push({ role: "assistant", content: reply });
  }

  async function sendCompletion(event) {
    event.preventDefault();
    const prompt = $("prompt").value;
    if (!prompt || state.controller) return;
    if (!state.model) {
      await connect();
      if (!state.model) return;
    }
    clearError();
    const out = $("completion-output");
    out.hidden = false;
    out.querySelector(".prompt-echo").textContent = prompt;
    const generated = out.querySelector(".generated");
    generated.textContent = "";
    let text = "";
    await stream("v1/completions", { model: state.model, prompt, ...sampling() }, {
      onText: (piece) => { text += piece; follow(out, () => { generated.textContent = text; }); },
      onCitations: () => {},
    });
  }

  // --- controls -------------------------------------------------------------------------------------

  function showValue(id) {
    $(`${id}-value`).textContent = $(id).value;
  }

  function applyMode() {
    const chat = state.mode === "chat";
    $("chat-pane").hidden = !chat;
    $("completion-pane").hidden = chat;
    for (const button of document.querySelectorAll("#modes button")) {
      button.setAttribute("aria-selected", String(button.dataset.mode === state.mode));
    }
    // Templates and retrieval shape a conversation: they apply to chat only.
    $("template").disabled = !chat;
    $("rag").disabled = !chat || state.ragIndex === null;
    $("top-k").disabled = !chat || state.ragIndex === null;
  }

  function setup() {
    for (const id of ["temperature", "top-p", "max-tokens", "top-k"]) {
      $(id).addEventListener("input", () => showValue(id));
      showValue(id);
    }
    for (const button of document.querySelectorAll("#modes button")) {
      button.addEventListener("click", () => { state.mode = button.dataset.mode; applyMode(); });
    }
    $("chat-form").addEventListener("submit", sendChat);
    $("completion-form").addEventListener("submit", sendCompletion);
    for (const [area, form] of [["message", "chat-form"], ["prompt", "completion-form"]]) {
      $(area).addEventListener("keydown", (e) => {
        if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $(form).requestSubmit();
      });
    }
    $("stop").addEventListener("click", () => state.controller && state.controller.abort());
    $("clear").addEventListener("click", () => {
      state.history = [];
      $("conversation").replaceChildren();
      clearError();
      setStatus("Ready.");
    });
    $("api-key").addEventListener("change", connect);
    busy(false);
    applyMode();
    connect();
  }

  setup();
})();
