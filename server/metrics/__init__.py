"""Prometheus metrics, in one place: ``registry`` (the server's own: what the dataplane, its
batchers, the event loop and the HTTP port report; the names are a contract), ``summing`` (the
--workers parent's /metrics: every worker's added up), ``exposition`` (the /metrics port, with
a read timeout and a cap on connections, which prometheus_client's own server has not)."""
