"""One metric reader for both exports: the Prometheus endpoint and the OTLP push.

    reader = PrometheusOtlpReader(otlp_metric_exporter, interval_ms=10_000, registry=registry)

A MeterProvider keeps a copy of every series per metric reader, so each histogram record on the
request path is aggregated once per reader: with OpenTelemetry's PrometheusMetricReader and a
PeriodicExportingMetricReader side by side, twice. This reader is the Prometheus one (a scrape
collects) and also, every interval, collects from its own thread and hands the result to the OTLP
metric exporter: one aggregation, two exports. Both get cumulative data (Prometheus needs it; it is
OTLP's default temporality). `setup_telemetry` uses it only when the OTLP exporter asks for
cumulative data and default aggregations; otherwise it keeps two readers.
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import AggregationTemporality
from opentelemetry.sdk.metrics.view import DefaultAggregation, ExplicitBucketHistogramAggregation

log = logging.getLogger(__name__)


def _default(aggregation: Any) -> bool:
    """Aggregates as the Prometheus reader does (explicit buckets: the instrument's advisory ones)."""
    return isinstance(aggregation, DefaultAggregation) or (
        type(aggregation) is ExplicitBucketHistogramAggregation and getattr(aggregation, "_boundaries", 0) is None
        and getattr(aggregation, "_record_min_max", False))


def shares_a_reader(exporter: Any) -> bool:
    """Whether an OTLP metric exporter takes what the Prometheus reader collects: cumulative sums
    and default aggregations for every instrument kind (OTLP's defaults; the environment can ask
    for delta temporality or exponential histograms instead)."""
    temporality = getattr(exporter, "_preferred_temporality", None)
    aggregation = getattr(exporter, "_preferred_aggregation", None)
    if temporality is None or aggregation is None:  # an exporter without these: keep its own reader
        return False
    return (all(t == AggregationTemporality.CUMULATIVE for t in temporality.values())
            and all(_default(a) for a in aggregation.values()))


class PrometheusOtlpReader(PrometheusMetricReader):
    def __init__(self, exporter: Any, interval_ms: float, **prometheus_kwargs: Any):
        super().__init__(**prometheus_kwargs)
        self._exporter = exporter
        self._interval_s = interval_ms / 1000.0
        self._pushing = threading.local()  # set in the thread whose collect() goes to OTLP
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otlp-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._push()

    def _push(self, timeout_millis: float = 10_000) -> None:
        self._pushing.on = True
        try:
            self.collect(timeout_millis=timeout_millis)
        except Exception:  # a failed collection must not end the push thread
            log.exception("collecting metrics for OTLP failed")
        finally:
            self._pushing.on = False

    def _receive_metrics(self, metrics_data: Any, timeout_millis: float = 10_000, **kwargs: Any) -> None:
        if getattr(self._pushing, "on", False):
            if metrics_data is not None:
                self._exporter.export(metrics_data, timeout_millis=timeout_millis)
            return
        super()._receive_metrics(metrics_data, timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Push now (a scrape collects for itself; collecting here would queue data for the next one)."""
        self._push(timeout_millis)
        return self._exporter.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._stop.set()
        self._thread.join(timeout_millis / 1000.0)
        self._push(timeout_millis)  # what was recorded since the last push
        self._exporter.shutdown(timeout_millis=timeout_millis)
        super().shutdown(timeout_millis=timeout_millis, **kwargs)


__all__ = ["PrometheusOtlpReader", "shares_a_reader"]
