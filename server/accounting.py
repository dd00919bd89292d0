"""Money: a key's budget, what its jobs were charged, what its unfinished jobs hold reserved.

A job's cost is estimated at admission (its units of work, pipelines/cost_model.py, times the
calibrated rates, server/eta.py, times the GPU price) and reserved atomically with queueing it, so
concurrent submissions cannot together overspend a key. The worker charges the actual cost, at the
price in force when the job ends, in the job's terminal write, which also releases the reservation;
balances are sums of those stored costs and open reservations, never re-priced.
"""

from __future__ import annotations

from .auth import KeyRing
from .settings import Settings

MIN_RESERVED_SECONDS = 1.0


def charge_usd(inference_seconds: float, price_per_gpu_hour_usd: float) -> float:
    """What a completed job costs: its GPU seconds at the hourly price."""
    return round(inference_seconds * price_per_gpu_hour_usd / 3600, 6)


class Accounting:
    def __init__(self, settings: Settings, store, keys: KeyRing):
        self.settings = settings
        self.store = store
        self.keys = keys

    def budget(self, owner: str) -> float | None:
        record = self.keys.by_owner(owner)
        return record.budget_usd if record else None

    def balance(self, owner: str) -> float | None:
        """What is left of the key's budget after its charged costs and open reservations."""
        budget = self.budget(owner)
        if budget is None:
            return None
        return round(budget - self.store.committed_usd(owner), 6)

    def reserve_usd(self, work: dict[str, float]) -> float:
        """The estimated cost a job with these units of work reserves (at least one GPU second: below
        that an estimate is mostly noise, and a reservation too small would let a key overspend)."""
        seconds = max(self.store.cost_model().seconds(work), MIN_RESERVED_SECONDS)
        return charge_usd(seconds, self.settings.price_per_gpu_hour_usd)
