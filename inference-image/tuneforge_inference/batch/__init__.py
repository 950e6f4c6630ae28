"""The batch runner: executes one OpenAI-style batch (`tuneforge-batch --run batch.json`).

Modules, one job each: `retry` (backoff policy), `sender` (one request with retries),
`records` (OpenAI per-line objects), `journal` (crash-safe on-disk results), `progress`
(progress.json), `cancel` (SIGTERM and the cancel marker), `publish` (final files as
Files), `runner` (the phases), `__main__` (CLI and exit codes). See docs/batches.md.
"""
