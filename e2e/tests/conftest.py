"""e2e tests use the cluster fixtures from :mod:`meshtest.fixtures`."""

from __future__ import annotations

pytest_plugins = ["meshtest.fixtures"]
