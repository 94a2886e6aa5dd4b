"""--workers: N `python -m server` processes on one port, started and watched by a parent.

- ``cores``: usable cores (affinity and cgroup quota) and what --workers and the thread flags
  come to on them;
- ``ports``: the public port, checked free of other programs and held for the workers;
- ``supervisor``: the parent (start, health gate, restarts, --max-worker-rss-mb, SIGTERM);
- ``worker``: a worker's side of it (its link to the parent, retiring without losing a request).
Their /metrics, added up, is server/metrics/workers.py's.

docs/serving.md#workers says how workers and threads are chosen.
"""
