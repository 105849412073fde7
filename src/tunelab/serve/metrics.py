"""Prometheus metrics (``GET /metrics``, admin only), labelled by the model and adapter that answered.

Each server has its own collector registry, so two servers in one process (as in tests) never mix
their counts. Queue depth and running rows are read from the engine when scraped.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128)
COUNTED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/feedback")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)


class Metrics:
    def __init__(self, engine):
        self.registry = CollectorRegistry()
        labels = ("model", "adapter")
        self.requests = Counter("tunelab_requests", "Completed requests", (*labels, "endpoint", "status"),
                                registry=self.registry)
        self.errors = Counter("tunelab_request_errors", "Requests answered with an error status", ("status", "path"),
                              registry=self.registry)
        self.prompt_tokens = Counter("tunelab_prompt_tokens", "Prompt tokens", labels, registry=self.registry)
        self.completion_tokens = Counter("tunelab_completion_tokens", "Generated tokens", labels,
                                         registry=self.registry)
        self.time_to_first_token = Histogram("tunelab_time_to_first_token_seconds", "From arrival to the first token",
                                             labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.latency = Histogram("tunelab_request_latency_seconds", "From arrival to the last token", labels,
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("tunelab_batch_size", "Rows per decode step", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.batch_models = Histogram("tunelab_batch_models", "Models (base, adapters) sharing a decode step",
                                      buckets=(1, 2, 3, 4, 6, 8, 12, 16), registry=self.registry)
        Gauge("tunelab_queue_depth", "Choices waiting for a batch slot",
              registry=self.registry).set_function(lambda: engine.queue_depth)
        Gauge("tunelab_running", "Choices being generated",
              registry=self.registry).set_function(lambda: engine.running)

    def finished(self, model: str, adapter: str, endpoint: str, prompt_tokens: int, completion_tokens: int,
                 first_token: float | None, latency: float) -> None:
        self.requests.labels(model, adapter, endpoint, "ok").inc()
        self.prompt_tokens.labels(model, adapter).inc(prompt_tokens)
        self.completion_tokens.labels(model, adapter).inc(completion_tokens)
        if first_token is not None:
            self.time_to_first_token.labels(model, adapter).observe(first_token)
        self.latency.labels(model, adapter).observe(latency)

    def step(self, rows: int, models: int) -> None:
        self.batch_size.observe(rows)
        self.batch_models.observe(models)

    def failed(self, status: int, path: str) -> None:
        self.errors.labels(str(status), path).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class CountErrors:
    """ASGI middleware: every response with a 4xx or 5xx status counts in ``tunelab_request_errors``."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counted(message):
            if message["type"] == "http.response.start" and message["status"] >= 400:
                path = scope["path"] if scope["path"] in COUNTED_PATHS else "other"  # bounded label values
                self.metrics.failed(message["status"], path)
            await send(message)

        await self.app(scope, receive, counted)
