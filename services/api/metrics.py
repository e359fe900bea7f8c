"""``GET /metrics``: the views as Prometheus metrics, through ``prometheus_client``.

Collected on each scrape from the read models (a custom collector on a registry of its own, so
nothing is kept between scrapes): per cluster the recoverability window (oldest and newest
restorable "data from"), the last successful backup, stored bytes, backups by status, expired
and deleted backups and the bytes freed, and whether the newest chain is kept past its retention.
Timestamps are Unix seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from managed_backups.shared.views import ReadModels

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "managed_backups_"


def _seconds(value: str | None) -> float | None:
    return datetime.fromisoformat(value).timestamp() if value else None


class ViewsCollector(Collector):
    def __init__(self, models: ReadModels, now: Callable[[], datetime]) -> None:
        self.models = models
        self.now = now

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = self.now()

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ("cluster",)) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, labels=list(labels))

        by_status = gauge("backups", "Backups by status.", ("cluster", "status"))
        last = gauge(
            "last_successful_backup_timestamp_seconds",
            "Data-from time of the newest COMPLETE backup.",
        )
        oldest = gauge(
            "oldest_restorable_timestamp_seconds",
            "Oldest restorable data-from time (the window's start).",
        )
        newest = gauge(
            "newest_restorable_timestamp_seconds",
            "Newest restorable data-from time (the window's end).",
        )
        stored = gauge("stored_bytes", "Bytes stored for the cluster's backups not yet deleted.")
        expired = gauge("expired_backups", "Backups expired by retention so far.")
        deleted = gauge("deleted_backups", "Backups whose objects retention deleted so far.")
        freed = gauge("freed_bytes", "Bytes retention freed so far.")
        kept = gauge(
            "kept_past_retention",
            "1 when the newest restorable chain is only kept because no newer full completed.",
        )
        clusters: set[str] = set()
        for cluster_id, status, count, _latest in self.models.backup_metrics():
            by_status.add_metric([cluster_id, status], count)
            clusters.add(cluster_id)
        for cluster_id in sorted(clusters):
            window = self.models.recoverability(cluster_id, now)
            for family, key in (
                (last, "last_successful_backup"),
                (oldest, "oldest_restorable"),
                (newest, "newest_restorable"),
            ):
                value = _seconds(window[key])
                if value is not None:
                    family.add_metric([cluster_id], value)
            stored.add_metric([cluster_id], window["stored_bytes"])
            expired.add_metric([cluster_id], window["expired_backups"])
            deleted.add_metric([cluster_id], window["deleted_backups"])
            freed.add_metric([cluster_id], window["bytes_freed"])
            kept.add_metric([cluster_id], 1.0 if window["kept_past_retention"] else 0.0)
        position = GaugeMetricFamily(
            PREFIX + "projection_position", "Event-store position the views reached."
        )
        position.add_metric([], self.models.position())
        yield from (
            last,
            oldest,
            newest,
            stored,
            by_status,
            expired,
            deleted,
            freed,
            kept,
            position,
        )


def render(models: ReadModels, now: Callable[[], datetime]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ViewsCollector(models, now))
    return generate_latest(registry)
