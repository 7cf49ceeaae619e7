"""A throwaway CA for the identity library's tests (the real CA lives in istiod and is tested there)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from meshkit.hbone.testing import TestCA

Signer = Callable[[bytes, list[str]], list[str]]


@pytest.fixture(scope="module")
def sign() -> Signer:
    """sign(csr_pem, uris) -> a CreateCertificate-style chain [leaf, root]."""
    return TestCA(name="test-root").sign_csr
