"""The echo test app: a server speaking HTTP/1.1, h2c, gRPC and raw TCP that answers with ``Key=Value`` lines
(upstream's ``pkg/test/echo`` response format, spec deploy-and-e2e §4.3), and a client that sends N requests
or holds a connection open. Images ``<hub>/app:<tag>`` and ``<hub>/echo:<tag>`` map here
(``meshtest.cluster.images``).
"""

from __future__ import annotations

from meshtest.echo.fields import EchoResponse, parse_responses

__all__ = ["EchoResponse", "parse_responses"]
