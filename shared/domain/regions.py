"""Rule: "a cluster's backups go to one of its regions, chosen at random at registration, for
ever" (the backup region never changes, so a chain never spans two stores)."""

from __future__ import annotations

import random
from collections.abc import Sequence

_random = random.SystemRandom()


def choose_backup_region(regions: Sequence[str], rng: random.Random = _random) -> str:
    if not regions:
        raise ValueError("a cluster needs at least one region")
    return rng.choice(list(regions))
