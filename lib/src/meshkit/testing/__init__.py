"""Test helpers shared by every member's tests.

- :mod:`meshkit.testing.pytest_plugin`: loaded for the whole workspace; root-marker handling (skip when not
  root, fail in CI) and the leaked-asyncio-task check; also enables ``pytester``.
- :mod:`meshkit.testing.netns`: :func:`~meshkit.testing.netns.netns_pair`, two namespaces joined by a veth.
- :func:`meshkit.netns.temp_netns` (in the library proper): one named namespace, always deleted.
"""
