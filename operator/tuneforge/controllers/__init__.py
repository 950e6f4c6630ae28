"""The tuneforge operator: kopf controllers for the four tuneforge.io kinds.

One module per kind holds the thin kopf handlers (I/O only); `builders` turns specs into
the Kubernetes objects they create (pure, unit-tested), `status` holds the condition and
phase rules every kind shares, `ticker` the one reconcile loop every kind runs on (and
`leadership` whether this replica may run it), `settings` the tunables each kind is
registered with, `metrics` the Prometheus instruments, `kopf_readiness` a fix to kopf's
start on many objects, and `run` wires it all into one kopf operator (`tuneforge operator`).
"""
