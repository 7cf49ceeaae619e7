"""KubeJwtAuthenticator: every rejection path, and the TokenReview cache (fake TokenReview; see
test_cluster_tokenreview.py for the real API server)."""

from __future__ import annotations

import grpc
import pytest
from istiod.security.authn import AuthenticationError, KubeJwtAuthenticator, TokenReviewResult
from meshkit.identity.spiffe import Identity

from .conftest import FakeReviewer, sa_token


@pytest.fixture
def reviewer() -> FakeReviewer:
    return FakeReviewer()


@pytest.fixture
def authn(reviewer: FakeReviewer) -> KubeJwtAuthenticator:
    return KubeJwtAuthenticator(
        reviewer, trust_domain="cluster.local", remote_reviewers={"east": FakeReviewer()}
    )


def md(token: str | None, cluster: str | None = None) -> list[tuple[str, str]]:
    out = []
    if token is not None:
        out.append(("authorization", f"Bearer {token}"))
    if cluster is not None:
        out.append(("clusterid", cluster))
    return out


async def reject(authn: KubeJwtAuthenticator, metadata: list[tuple[str, str]]) -> str:
    with pytest.raises(AuthenticationError) as info:
        await authn.authenticate(metadata)
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert info.value.message.startswith("request authenticate failure: ")
    return info.value.message


async def test_valid_token(authn: KubeJwtAuthenticator) -> None:
    caller = await authn.authenticate(md(sa_token("istio-system", "ztunnel", "zt-1", "u1"), "Kubernetes"))
    assert caller.identity == Identity("cluster.local", "istio-system", "ztunnel")
    assert caller.service_account == "istio-system/ztunnel"
    assert (caller.pod_name, caller.pod_uid, caller.cluster_id) == ("zt-1", "u1", "Kubernetes")


async def test_empty_cluster_header_means_local(authn: KubeJwtAuthenticator) -> None:
    assert (await authn.authenticate(md(sa_token("a", "b"), ""))).cluster_id == "Kubernetes"
    assert (await authn.authenticate(md(sa_token("a", "b")))).cluster_id == "Kubernetes"


async def test_known_remote_cluster(authn: KubeJwtAuthenticator) -> None:
    assert (await authn.authenticate(md(sa_token("a", "b"), "east"))).cluster_id == "east"


async def test_missing_token(authn: KubeJwtAuthenticator) -> None:
    assert "no bearer token" in await reject(authn, md(None))


async def test_malformed_authorization(authn: KubeJwtAuthenticator) -> None:
    assert "not of the form 'Bearer <token>'" in await reject(authn, [("authorization", "Basic abc")])


async def test_unknown_cluster(authn: KubeJwtAuthenticator) -> None:
    message = await reject(authn, md(sa_token("a", "b"), "west"))
    assert message == (
        "request authenticate failure: unknown cluster 'west' in the 'clusterid' metadata "
        "(known: Kubernetes, east)"
    )


async def test_expired_token(authn: KubeJwtAuthenticator, reviewer: FakeReviewer) -> None:
    assert "the token expired at" in await reject(authn, md(sa_token("a", "b", exp_in=-10)))
    assert reviewer.calls == 0  # refused before bothering the API server


async def test_wrong_audience(authn: KubeJwtAuthenticator, reviewer: FakeReviewer) -> None:
    message = await reject(authn, md(sa_token("a", "b", aud=["https://kubernetes.default.svc"])))
    assert "bad token audience ['https://kubernetes.default.svc']: istiod accepts ['istio-ca']" in message
    assert reviewer.calls == 0


async def test_api_server_verdicts_are_classified(
    authn: KubeJwtAuthenticator, reviewer: FakeReviewer
) -> None:
    reviewer.forced = {
        "opaque-expired": TokenReviewResult(
            False, error="[invalid bearer token, service account token has expired]"
        ),
        "opaque-aud": TokenReviewResult(
            False, error='token audiences ["x"] is invalid for the target audiences'
        ),
        "opaque-bad": TokenReviewResult(False, error="invalid bearer token"),
        "opaque-user": TokenReviewResult(True, username="admin", audiences=("istio-ca",)),
        "opaque-aud2": TokenReviewResult(True, username="system:serviceaccount:a:b", audiences=("other",)),
        "opaque-aud3": TokenReviewResult(True, username="system:serviceaccount:a:b"),
        "opaque-err": TokenReviewResult(
            True, username="system:serviceaccount:a:b", audiences=("istio-ca",), error="webhook timed out"
        ),
    }
    assert "the token is expired (API server:" in await reject(authn, md("opaque-expired"))
    assert "bad token audience: istiod accepts ['istio-ca']" in await reject(authn, md("opaque-aud"))
    assert "the API server rejected the token: invalid bearer token" in await reject(authn, md("opaque-bad"))
    assert "not a service account token (user 'admin')" in await reject(authn, md("opaque-user"))
    assert "bad token audience ['other']" in await reject(authn, md("opaque-aud2"))
    # authenticated, but status.audiences empty: valid only for the API server's own audience
    assert "bad token audience none confirmed by the API server" in await reject(authn, md("opaque-aud3"))
    assert "the API server rejected the token: webhook timed out" in await reject(authn, md("opaque-err"))


async def test_token_review_outage_is_a_clear_failure(reviewer: FakeReviewer) -> None:
    class Down:
        async def review(self, token: str, audiences: object) -> TokenReviewResult:
            raise ConnectionRefusedError("connection refused")

    authn = KubeJwtAuthenticator(Down())
    assert "token review against the API server failed: connection refused" in await reject(authn, md("t"))


async def test_positive_answers_are_cached_briefly(reviewer: FakeReviewer) -> None:
    now = [1_000_000_000.0]
    authn = KubeJwtAuthenticator(reviewer, cache_ttl_s=30, wall_clock=lambda: now[0])
    token = sa_token("a", "b", exp_in=10**10)
    for _ in range(3):
        await authn.authenticate(md(token))
    assert reviewer.calls == 1
    now[0] += 31
    await authn.authenticate(md(token))
    assert reviewer.calls == 2


async def test_cache_never_outlives_the_token(reviewer: FakeReviewer) -> None:
    """A token cached as valid is refused once its own expiry passes, even inside the cache TTL."""
    import time

    now = [time.time()]
    authn = KubeJwtAuthenticator(reviewer, cache_ttl_s=3600, wall_clock=lambda: now[0])
    token = sa_token("a", "b", exp_in=10)
    await authn.authenticate(md(token))
    now[0] += 5
    await authn.authenticate(md(token))
    assert reviewer.calls == 1
    now[0] += 10
    assert "the token expired at" in await reject(authn, md(token))


async def test_rejections_are_not_cached_and_tokens_do_not_share_entries(reviewer: FakeReviewer) -> None:
    authn = KubeJwtAuthenticator(reviewer)
    reviewer.forced["opaque"] = TokenReviewResult(False, error="invalid bearer token")
    await reject(authn, md("opaque"))
    reviewer.forced["opaque"] = TokenReviewResult(
        True, username="system:serviceaccount:a:b", audiences=("istio-ca",)
    )
    assert (await authn.authenticate(md("opaque"))).service_account == "a/b"
    other = await authn.authenticate(md(sa_token("c", "d")))
    assert other.service_account == "c/d"
    assert reviewer.calls == 3
