"""The durable store behind the queue. ``JobStore`` is the interface; SQLite is the embedded default
(a Redis implementation can follow without touching contracts or workers)."""

from .base import JobStore, Profile, Upload, WebhookDelivery
from .sqlite import SQLiteStore

__all__ = ["JobStore", "Profile", "SQLiteStore", "Upload", "WebhookDelivery"]
