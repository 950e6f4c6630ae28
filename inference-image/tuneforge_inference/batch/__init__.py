"""The batch runner: executes one OpenAI-style batch (`tuneforge-batch --run batch.json`).

Modules, one job each: `retry` (backoff policy), `sender` (one request with retries),
`records` (OpenAI per-line objects), `journal` (crash-safe on-disk results), `snapshot`
(the journal's copy in an object store), `crashes` (crash-loop detection), `progress`
(progress.json), `cancel` (the cancel marker), `interrupt` (SIGTERM: the Pod goes away),
`publish` (final files as Files), `runner` (the phases), `__main__` (CLI and exit codes).
See docs/batches.md.
"""
