// Chat with any model the key can call, streamed, with the request's timing and tokens.
import { useEffect, useRef, useState } from "preact/hooks";

import { api, streamChat } from "../api.js";
import { ErrorNotice, Field } from "../components.js";
import { seconds } from "../format.js";
import { usePoll } from "../hooks.js";
import { html } from "../html.js";

function Stats({ stats }) {
  if (!stats) return null;
  const usage = stats.usage;
  return html`<p class="small muted stats" aria-label="Last reply">
    first token ${seconds(stats.firstToken)} · total ${seconds(stats.total)}
    ${usage ? ` · ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` : ` · ${stats.chunks} chunks`}
  </p>`;
}

export function PlaygroundPage({ params }) {
  const models = usePoll(() => api("/v1/models"), []);
  const [model, setModel] = useState(params.get("model") || "");
  const [system, setSystem] = useState("");
  const [temperature, setTemperature] = useState(0.7);
  const [maxTokens, setMaxTokens] = useState(256);
  const [messages, setMessages] = useState([]);
  const [draft, setDraft] = useState("");
  const [stats, setStats] = useState(null);
  const [error, setError] = useState(null);
  const [streaming, setStreaming] = useState(false);
  const abort = useRef(null);
  const log = useRef(null);
  const ids = (models.data?.data || []).map((m) => m.id);
  const chosen = model || ids[0] || "";

  useEffect(() => {
    if (log.current) log.current.scrollTop = log.current.scrollHeight;
  }, [messages]);

  const send = async (event) => {
    event?.preventDefault();
    const text = draft.trim();
    if (!text || !chosen || streaming) return;
    const history = [...messages, { role: "user", content: text }];
    setMessages([...history, { role: "assistant", content: "" }]);
    setDraft("");
    setError(null);
    setStreaming(true);
    abort.current = new AbortController();
    const started = performance.now();
    let firstToken = null;
    let reply = "";
    let usage = null;
    let chunks = 0;
    try {
      const body = {
        model: chosen, temperature, max_tokens: maxTokens,
        messages: [...(system.trim() ? [{ role: "system", content: system.trim() }] : []), ...history],
      };
      for await (const chunk of streamChat(body, abort.current.signal)) {
        if (chunk.usage) usage = chunk.usage;
        const delta = chunk.choices?.[0]?.delta?.content;
        if (!delta) continue;
        chunks += 1;
        if (firstToken === null) firstToken = (performance.now() - started) / 1000;
        reply += delta;
        setMessages([...history, { role: "assistant", content: reply }]);
      }
    } catch (failure) {
      if (failure.name !== "AbortError") setError(failure);
    } finally {
      setStreaming(false);
      setStats({ firstToken, total: (performance.now() - started) / 1000, usage, chunks });
    }
  };

  const keyDown = (event) => {
    if (event.key === "Enter" && !event.shiftKey) send(event);
  };

  return html`<section class="playground">
    <h1>Playground</h1>
    <div class="playground-grid">
      <form class="settings" onSubmit=${(e) => e.preventDefault()}>
        <${Field} id="pg-model" label="Model">
          <select id="pg-model" value=${chosen} onChange=${(e) => setModel(e.target.value)}>
            ${!ids.includes(chosen) && chosen && html`<option value=${chosen}>${chosen}</option>`}
            ${ids.map((id) => html`<option value=${id}>${id}</option>`)}
          </select>
        </${Field}>
        <${Field} id="pg-system" label="System prompt">
          <textarea id="pg-system" rows="4" value=${system} onInput=${(e) => setSystem(e.target.value)}></textarea>
        </${Field}>
        <${Field} id="pg-temperature" label=${`Temperature: ${temperature}`}>
          <input id="pg-temperature" type="range" min="0" max="2" step="0.1" value=${temperature}
            onInput=${(e) => setTemperature(Number(e.target.value))} />
        </${Field}>
        <${Field} id="pg-max-tokens" label="Max tokens">
          <input id="pg-max-tokens" type="number" min="1" max="32768" value=${maxTokens}
            onInput=${(e) => setMaxTokens(Number(e.target.value) || 1)} />
        </${Field}>
        <button type="button" onClick=${() => { setMessages([]); setStats(null); }} disabled=${streaming}>Clear conversation</button>
      </form>
      <div class="chat">
        <ol class="messages" ref=${log} aria-live="polite" aria-label="Conversation">
          ${messages.length === 0 && html`<li class="empty">Send a message to start.</li>`}
          ${messages.map((m) => html`<li class=${`message ${m.role}`}><span class="role">${m.role}</span><div class="content">${m.content}</div></li>`)}
        </ol>
        <${ErrorNotice} error=${error} title="The model did not answer" />
        <form class="composer" onSubmit=${send}>
          <label for="pg-input" class="visually-hidden">Message</label>
          <textarea id="pg-input" rows="3" placeholder="Message (Enter sends, Shift+Enter for a new line)"
            value=${draft} onInput=${(e) => setDraft(e.target.value)} onKeyDown=${keyDown}></textarea>
          ${streaming
            ? html`<button type="button" onClick=${() => abort.current.abort()}>Stop</button>`
            : html`<button type="submit" class="primary" disabled=${!draft.trim() || !chosen}>Send</button>`}
        </form>
        <${Stats} stats=${stats} />
      </div>
    </div>
  </section>`;
}
