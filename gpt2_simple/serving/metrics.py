"""The server's Prometheus metrics: what `/metrics` reports, through the `prometheus-client` library.

This module owns the counters, gauges and histograms of one app (each app has its own registry,
so two servers in one process do not mix their numbers) and the ASGI middleware that counts every
request by endpoint and status and times it. Tokens, aborted rows and time to first token are
reported by `answers.Run` as a request's events arrive; queue depth and running rows are read from the batcher
when scraped. Names start with `gpt2_simple_`.
"""
import time

PREFIX = "gpt2_simple_"
# Seconds: from a fraction of a step on a GPU to a long completion on a CPU.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """The metrics of one server. `batchers()`: its workers now; `endpoints`: the paths counted by name (others count
    as "other")."""

    def __init__(self, batchers, endpoints, install):
        try:
            import prometheus_client as prom
        except ImportError:
            raise ModuleNotFoundError(f"gpt2_simple serve needs prometheus-client for /metrics; install it with: "
                                      f"{install}") from None
        self._prom, self.endpoints = prom, set(endpoints)
        self.registry = registry = prom.CollectorRegistry()
        self.requests = prom.Counter(PREFIX + "requests", "HTTP requests by endpoint and status",
                                     ["endpoint", "status"], registry=registry)
        self.prompt_tokens = prom.Counter(PREFIX + "prompt_tokens", "Prompt tokens of accepted requests, by model",
                                          ["model"], registry=registry)
        self.completion_tokens = prom.Counter(PREFIX + "completion_tokens", "Tokens generated, by model",
                                              ["model"], registry=registry)
        self.aborted_rows = prom.Counter(PREFIX + "aborted_rows", "Rows ended unfinished by a shutdown "
                                         "(finish_reason abort), by model", ["model"], registry=registry)
        self.latency = prom.Histogram(PREFIX + "request_seconds", "Time from a request to the end of its answer",
                                      ["endpoint"], buckets=BUCKETS, registry=registry)
        self.first_token = prom.Histogram(PREFIX + "time_to_first_token_seconds",
                                          "Time from a request to its first generated text or finished choice, by model",
                                          ["model"], buckets=BUCKETS, registry=registry)
        prom.Gauge(PREFIX + "queue_depth", "Requests waiting for the models",
                   registry=registry).set_function(lambda: sum(b.queued for b in batchers()))
        prom.Gauge(PREFIX + "running_rows", "Rows (prompts times n) in the batches running now",
                   registry=registry).set_function(lambda: sum(b.running for b in batchers()))

    def scrape(self):
        """(body, content type) of Prometheus' text format."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST

    def middleware(self, app):
        """`app` wrapped so that every HTTP request is counted and timed once its answer ends."""
        async def counted(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
            start, status = time.perf_counter(), [500]

            async def sending(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, sending)
            finally:
                self.requests.labels(endpoint, str(status[0])).inc()
                self.latency.labels(endpoint).observe(time.perf_counter() - start)

        counted.state = app.state
        return counted
