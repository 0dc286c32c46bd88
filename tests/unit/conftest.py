"""Fixtures of the unit tests."""

import pytest

from wtb_ray.storage.store import Store


@pytest.fixture
def store(sqlite_url):
    """The embedded store, on a fresh SQLite file."""
    s = Store.open(sqlite_url)
    yield s
    s.close()
