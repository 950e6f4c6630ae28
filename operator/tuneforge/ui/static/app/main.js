// The dashboard's shell: sign-in, navigation and the page the URL names.
import { render } from "preact";
import { useEffect, useState } from "preact/hooks";

import { ApiError, api, session } from "./api.js";
import { ErrorNotice, Loading } from "./components.js";
import { useRoute } from "./hooks.js";
import { html } from "./html.js";
import { BatchPage } from "./pages/batch.js";
import { BatchesPage } from "./pages/batches.js";
import { JobPage } from "./pages/job.js";
import { JobsPage } from "./pages/jobs.js";
import { ModelsPage } from "./pages/models.js";
import { NewJobPage } from "./pages/new-job.js";
import { PlaygroundPage } from "./pages/playground.js";
import { can } from "./scopes.js";

const KEY_PATH = "/api/v1/fine-tuning/key";

function SignIn({ onSignedIn, reason }) {
  const [key, setKey] = useState("");
  const [error, setError] = useState(reason ? new ApiError(401, { message: reason }) : null);
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    setBusy(true);
    try {
      const caller = await api(KEY_PATH, { key: key.trim() });
      session.save(key.trim());
      onSignedIn(caller);
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="sign-in">
    <h1>tuneforge</h1>
    <form onSubmit=${submit} aria-describedby="key-hint">
      <label for="api-key">API key</label>
      <input id="api-key" type="password" autocomplete="off" required value=${key}
        onInput=${(e) => setKey(e.target.value)} />
      <p class="hint" id="key-hint">A key made with <code>tuneforge keys create</code>. It stays in this browser tab.</p>
      <button type="submit" class="primary" disabled=${busy}>Sign in</button>
    </form>
    <${ErrorNotice} error=${error} title="Sign-in failed" />
  </main>`;
}

const NAV = [
  { path: "/jobs", label: "Jobs" },
  { path: "/new", label: "New job", scopes: ["files:write", "fine-tuning:write"] },
  { path: "/batches", label: "Batches", scopes: ["batches:read"] },
  { path: "/models", label: "Models", scopes: ["models:read"] },
  { path: "/playground", label: "Playground", scopes: ["chat"] },
];

function page(route, caller) {
  const [, section, id] = route.path.split("/");
  const props = { caller, params: route.params };
  if (section === "jobs" && id) return html`<${JobPage} ...${props} id=${decodeURIComponent(id)} />`;
  if (section === "new") return html`<${NewJobPage} ...${props} />`;
  if (section === "batches" && id) return html`<${BatchPage} ...${props} id=${decodeURIComponent(id)} />`;
  if (section === "batches") return html`<${BatchesPage} ...${props} />`;
  if (section === "models") return html`<${ModelsPage} ...${props} />`;
  if (section === "playground") return html`<${PlaygroundPage} ...${props} />`;
  return html`<${JobsPage} ...${props} />`;
}

function Shell({ caller, onSignOut }) {
  const route = useRoute();
  const section = `/${route.path.split("/")[1] || "jobs"}`;
  return html`<div class="shell">
    <a class="skip" href="#main">Skip to content</a>
    <header class="top">
      <a class="brand" href="#/jobs">tuneforge</a>
      <nav aria-label="Sections">
        ${NAV.filter((item) => (item.scopes || []).every((scope) => can(caller, scope))).map(
          (item) => html`<a href=${`#${item.path}`} aria-current=${section === item.path ? "page" : undefined}>${item.label}</a>`,
        )}
        <a href="/docs" target="_blank" rel="noopener">API docs</a>
      </nav>
      <div class="who">
        <span class="muted small" title=${caller.scopes.join(", ")}>${caller.tenant} · ${caller.name}</span>
        <button type="button" class="small-button" onClick=${onSignOut}>Sign out</button>
      </div>
    </header>
    <main id="main" tabindex="-1">${page(route, caller)}</main>
  </div>`;
}

function App() {
  const [caller, setCaller] = useState(null);
  const [checking, setChecking] = useState(Boolean(session.key));
  const [reason, setReason] = useState(null);
  useEffect(() => {
    if (session.key) {
      api(KEY_PATH).then(setCaller, () => session.clear()).finally(() => setChecking(false));
    }
    const signedOut = (event) => {
      setCaller(null);
      setReason(event.detail);
    };
    window.addEventListener("tuneforge:signed-out", signedOut);
    return () => window.removeEventListener("tuneforge:signed-out", signedOut);
  }, []);
  if (checking) return html`<${Loading} />`;
  if (!caller) return html`<${SignIn} reason=${reason} onSignedIn=${(who) => { setReason(null); setCaller(who); }} />`;
  const signOut = () => {
    session.clear();
    setCaller(null);
  };
  return html`<${Shell} caller=${caller} onSignOut=${signOut} />`;
}

render(html`<${App} />`, document.getElementById("app"));
