"""The object store of each backup region, opened once per process and shared by its threads.

A region's store is the URL ``Settings.region_store_url`` gives (a local directory or an
S3-compatible bucket); services that read or write backups (the executor, restore) ask here.
"""

from __future__ import annotations

import threading

from managed_backups.shared.dataplane.objectstore import ObjectStore, open_store
from managed_backups.shared.settings import Settings


class RegionStores:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stores: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()

    def for_region(self, region: str) -> ObjectStore:
        url = self.settings.region_store_url(region)
        with self._lock:
            if url not in self._stores:
                self._stores[url] = open_store(url)
            return self._stores[url]
