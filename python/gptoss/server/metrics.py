"""Prometheus metrics under vLLM's names with the prefix ``gptoss:`` (dashboards and gateways
built for vLLM need only the prefix changed). Gauges and the engine's own counters are read when
scraped; per-request counters and histograms are recorded as requests finish."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from .app import ServerContext

__all__ = ["Metrics", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
P = "gptoss:"
_LATENCY = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
            20.0, 40.0, 80.0, 160.0, 640.0)


class _EngineCollector:
    def __init__(self, ctx: ServerContext):
        self.ctx = ctx

    def collect(self):
        ctx = self.ctx
        running = waiting = preempt = usage = 0.0
        queries = hits = 0
        eng = ctx.engine
        if eng is not None:
            st = eng.scheduler.stats()
            running, preempt, usage = st["num_requests_running"], st["num_preemptions"], st["kv_cache_usage_perc"]
            waiting = eng.num_waiting()
            pc = ctx.model.prefix_cache_stats()
            queries, hits = pc["query_tokens"], pc["hit_tokens"]
        for name, doc, v in (("num_requests_running", "Requests running on the engine", running),
                             ("num_requests_waiting", "Requests waiting to run", waiting),
                             ("kv_cache_usage_perc", "Fraction of the KV cache in use (1 = full)", usage)):
            g = GaugeMetricFamily(P + name, doc, labels=["model_name"])
            g.add_metric([ctx.name], float(v))
            yield g
        for name, doc, v in (("num_preemptions", "Requests preempted (recomputed later) for room", preempt),
                             ("prefix_cache_queries", "Prompt tokens looked up in the prefix cache", queries),
                             ("prefix_cache_hits", "Prompt tokens found in the prefix cache", hits)):
            c = CounterMetricFamily(P + name, doc, labels=["model_name"])
            c.add_metric([ctx.name], float(v))
            yield c


class Metrics:
    def __init__(self, ctx: ServerContext):
        self.registry = CollectorRegistry()
        r, lab = self.registry, ["model_name"]
        self.name = ctx.name
        self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens processed", lab, registry=r)
        self.generation_tokens = Counter(P + "generation_tokens", "Tokens generated", lab, registry=r)
        self.request_success = Counter(P + "request_success", "Finished requests", lab + ["finished_reason"], registry=r)
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Time to the first token", lab, buckets=_LATENCY,
                              registry=r)
        self.itl = Histogram(P + "inter_token_latency_seconds", "Time between tokens", lab, buckets=_LATENCY,
                             registry=r)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "Request latency", lab, buckets=_LATENCY, registry=r)
        self.queue = Histogram(P + "request_queue_time_seconds", "Time waiting before running", lab,
                               buckets=_LATENCY, registry=r)
        r.register(_EngineCollector(ctx))

    def token_times(self, gen: Any, now: float, n: int) -> None:
        if gen.first_token_at is None:
            gen.first_token_at = now
            self.ttft.labels(self.name).observe(now - gen.t_submit)
        else:
            self.itl.labels(self.name).observe((now - gen._last_token_at) / n)
        gen._last_token_at = now

    def finished(self, gen: Any, out: Any, now: float) -> None:
        u = out.usage
        if u is not None:
            self.prompt_tokens.labels(self.name).inc(u.prompt_tokens)
            self.generation_tokens.labels(self.name).inc(u.completion_tokens)
        self.request_success.labels(self.name, str(out.finish_reason)).inc()
        self.e2e.labels(self.name).observe(now - gen.t_submit)
        st = gen.stream.state
        if st.admitted_time is not None:
            self.queue.labels(self.name).observe(max(0.0, st.admitted_time - st.arrival))

    def render(self) -> bytes:
        return generate_latest(self.registry)
