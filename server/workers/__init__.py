"""--workers: N `python -m server` processes on one port, started and watched by a parent.

- ``cores``: usable cores (affinity and cgroup quota) and what --workers and the thread flags
  come to on them;
- ``ports``: the public port, checked free of other programs and held for the workers;
- ``supervisor``: the parent (start, health gate, restarts, --max-worker-rss-mb, SIGTERM);
- ``worker``: a worker's side of it (its link to the parent, retiring without losing a request);
- ``summing``: one /metrics adding up every worker's.

docs/serving.md#workers says how workers and threads are chosen.
"""

from server.workers.cores import parse_workers, plan
from server.workers.supervisor import supervise, supervises
from server.workers.worker import is_worker, serve, tag_logs

__all__ = ["is_worker", "parse_workers", "plan", "serve", "supervise", "supervises", "tag_logs"]
