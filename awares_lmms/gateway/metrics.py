"""The gateway's ``/metrics``, in the Prometheus text exposition format (version 0.0.4).

Written here rather than with ``prometheus_client`` (not in the pinned stack): counters, gauges and
cumulative histograms with labels are a few dozen lines, and every series is named ``awares_gateway_*``.
Thread-safe: requests finish on worker threads.
"""

from __future__ import annotations

import math
import threading

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0)


def _labels(pairs: tuple) -> str:
    if not pairs:
        return ""
    escaped = (f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), " ")}"'
               for k, v in pairs)
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Family:
    def __init__(self, name: str, kind: str, help_text: str):
        self.name, self.kind, self.help = name, kind, help_text
        self.lock = threading.Lock()


class Counter(_Family):
    def __init__(self, name: str, help_text: str):
        super().__init__(name, "counter", help_text)
        self.values: dict[tuple, float] = {}

    def inc(self, amount: float = 1.0, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self.lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def samples(self):
        with self.lock:
            return [(self.name, key, value) for key, value in sorted(self.values.items())]


class Gauge(Counter):
    def __init__(self, name: str, help_text: str):
        _Family.__init__(self, name, "gauge", help_text)
        self.values = {(): 0.0}

    def set(self, value: float) -> None:
        with self.lock:
            self.values[()] = float(value)


class Histogram(_Family):
    def __init__(self, name: str, help_text: str, buckets: tuple):
        super().__init__(name, "histogram", help_text)
        self.buckets = tuple(buckets) + (math.inf,)
        self.series: dict[tuple, list] = {}  # labels -> [counts per bucket, sum, count]

    def observe(self, value: float, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self.lock:
            counts, total, n = self.series.get(key, ([0] * len(self.buckets), 0.0, 0))
            counts = [c + (value <= edge) for c, edge in zip(counts, self.buckets)]
            self.series[key] = (counts, total + value, n + 1)

    def samples(self):
        out = []
        with self.lock:
            for key, (counts, total, n) in sorted(self.series.items()):
                for edge, count in zip(self.buckets, counts):
                    out.append((f"{self.name}_bucket", key + (("le", _number(edge)),), count))
                out.append((f"{self.name}_sum", key, total))
                out.append((f"{self.name}_count", key, n))
        return out


class GatewayMetrics:
    """Every series the gateway exports."""

    def __init__(self):
        p = "awares_gateway_"
        self.requests = Counter(p + "requests_total", "Chat-completion requests by HTTP status.")
        self.errors = Counter(p + "errors_total", "Requests not answered, by kind (the error body's code).")
        self.latency = Histogram(p + "latency_seconds", "Latency per turn (1, 2) and in total, answered requests.",
                                 LATENCY_BUCKETS)
        self.visual_tokens = Counter(p + "visual_tokens_total", "Visual tokens sent to the model, by kind (lr, crops).")
        self.visual_tokens_full = Counter(p + "full_resolution_visual_tokens_total",
                                          "Visual tokens the full-resolution image would have cost (the RTR baseline).")
        self.rtr = Histogram(p + "rtr", "Retained-token ratio per answered request.", RATIO_BUCKETS)
        self.crops = Counter(p + "crops_requested_total", "Crops requested by the model, by region.")
        self.cached = Counter(p + "cached_tokens_total", "Prompt tokens served from the upstream's prefix cache, by turn.")
        self.in_flight = Gauge(p + "requests_in_flight", "Requests being answered now.")
        self.queued = Gauge(p + "requests_queued", "Requests waiting for a free slot.")
        self.families = [self.requests, self.errors, self.latency, self.visual_tokens, self.visual_tokens_full,
                         self.rtr, self.crops, self.cached, self.in_flight, self.queued]

    def record_answer(self, stats) -> None:
        """The accounting of one answered request."""
        self.latency.observe(stats.turn1_s, turn="1")
        if stats.turn2_s:
            self.latency.observe(stats.turn2_s, turn="2")
        self.latency.observe(stats.latency_s, turn="total")
        self.visual_tokens.inc(stats.visual_tokens_lr, kind="lr")
        self.visual_tokens.inc(stats.visual_tokens_crops, kind="crops")
        if stats.visual_tokens_full:
            self.visual_tokens_full.inc(stats.visual_tokens_full)
        if stats.rtr is not None:
            self.rtr.observe(stats.rtr)
        for region in stats.crops:
            self.crops.inc(region=region)
        for turn, cached in (("1", stats.cached_tokens_turn1), ("2", stats.cached_tokens_turn2)):
            if cached:
                self.cached.inc(cached, turn=turn)

    def exposition(self) -> str:
        lines = []
        for family in self.families:
            lines += [f"# HELP {family.name} {family.help}", f"# TYPE {family.name} {family.kind}"]
            lines += [f"{name}{_labels(labels)} {_number(value)}" for name, labels, value in family.samples()]
        return "\n".join(lines) + "\n"
