"""The outbox relay and its consumers (webhooks, the event feed, metrics)."""
