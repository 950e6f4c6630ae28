// Data loading and navigation shared by the pages.
import { useCallback, useEffect, useMemo, useRef, useState } from "preact/hooks";

/**
 * Loads `load()` now, again whenever `deps` change, and every `intervalMs` while `live`
 * (a boolean, or a function of the data: a finished job stops polling) and the tab is
 * visible (a hidden tab costs the gateway nothing). A failed refresh keeps the last data
 * and shows the error beside it.
 */
export function usePoll(load, deps, { intervalMs = 0, live = true } = {}) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  const latest = useRef(0);
  const run = useCallback(async () => {
    const ticket = ++latest.current;
    try {
      const data = await load();
      if (ticket === latest.current) setState({ data, error: null, loading: false });
    } catch (error) {
      if (ticket === latest.current) setState((old) => ({ data: old.data, error, loading: false }));
    }
  }, deps);
  useEffect(() => {
    setState((old) => ({ ...old, loading: true }));
    run();
  }, [run]);
  const polling = typeof live === "function" ? live(state.data) : live;
  useEffect(() => {
    if (!intervalMs || !polling) return undefined;
    const timer = setInterval(() => {
      if (document.visibilityState === "visible") run();
    }, intervalMs);
    return () => clearInterval(timer);
  }, [run, intervalMs, polling]);
  return { ...state, reload: run };
}

function routeOf(hash) {
  const [path, search = ""] = (hash.replace(/^#/, "") || "/jobs").split("?");
  return { path, params: new URLSearchParams(search) };
}

/**
 * The page named by the URL's hash (`#/jobs/ftjob-1`), so every page has a link. The hash
 * is read again once the listener is in place: a change between the first render and the
 * effect (a link followed while signing in) fires no event this hook hears, and the shell
 * would stay on the page it first rendered.
 */
export function useRoute() {
  const [hash, setHash] = useState(() => window.location.hash);
  useEffect(() => {
    const update = () => setHash(window.location.hash);
    window.addEventListener("hashchange", update);
    update();
    return () => window.removeEventListener("hashchange", update);
  }, []);
  return useMemo(() => routeOf(hash), [hash]);
}

export function navigate(path) {
  window.location.hash = path;
}
