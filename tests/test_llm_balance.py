"""Several OpenAI-compatible endpoints for one model: least-outstanding balancing (metakl.llm.balance)."""

from __future__ import annotations

import pytest

from metakl.errors import UserError
from metakl.llm.balance import LeastOutstanding, endpoint_list


def test_endpoint_list_accepts_lists_and_comma_separated_strings():
    assert endpoint_list("http://a/v1/") == ["http://a/v1"]
    assert endpoint_list("http://a/v1, http://b/v1") == ["http://a/v1", "http://b/v1"]
    assert endpoint_list(["http://a/v1", "http://b/v1/"]) == ["http://a/v1", "http://b/v1"]
    assert endpoint_list(None) == []
    with pytest.raises(UserError, match="listed twice"):
        endpoint_list(["http://a/v1", "http://a/v1/"])
    with pytest.raises(UserError, match="no endpoint"):
        endpoint_list(" , ")


def test_least_outstanding_prefers_the_idle_endpoint_and_round_robins_ties():
    lb = LeastOutstanding(3)
    assert [lb.acquire() for _ in range(3)] == [0, 1, 2]  # all idle: one each
    lb.release(1)  # endpoint 1 answered first: it is the only one with room
    assert lb.acquire() == 1
    assert lb.acquire() in (0, 1, 2) and max(lb.outstanding) - min(lb.outstanding) <= 1
    for i in range(3):
        while lb.outstanding[i]:
            lb.release(i)
    # Sequential traffic (one request at a time) still visits every endpoint.
    seen = []
    for _ in range(6):
        i = lb.acquire()
        seen.append(i)
        lb.release(i)
    assert sorted(seen) == [0, 0, 1, 1, 2, 2]
    assert sum(lb.sent) == 11


def test_a_slow_endpoint_gets_fewer_requests():
    """Simulated clock: endpoint 0 answers in 1 tick, endpoint 1 in 4; 8 requests in flight at all times."""
    lb = LeastOutstanding(2)
    in_flight: list[tuple[int, int]] = []  # (finish tick, endpoint)
    for tick in range(200):
        for done in [f for f in in_flight if f[0] <= tick]:
            in_flight.remove(done)
            lb.release(done[1])
        while len(in_flight) < 8:
            i = lb.acquire()
            in_flight.append((tick + (1 if i == 0 else 4), i))
    assert lb.sent[0] > 2.5 * lb.sent[1] > 0


def test_requests_over_two_endpoints_are_spread_and_sent_once(fault_proxy, tmp_path):
    from metakl.llm import ChatRequest, get_backend

    a, b = fault_proxy(), fault_proxy()
    requests = [ChatRequest(messages=[{"role": "user", "content": f"Say the number {i}."}], max_tokens=8, seed=1)
                for i in range(12)]
    with get_backend("openai", "smollm2-135m-instruct", base_url=[a.url, b.url], concurrency=4,
                     cache_dir=tmp_path / "cache") as backend:
        results = backend.generate_all(requests, progress=False)
        assert all(r.ok for r in results)
        assert backend.balancer.sent[0] > 0 and backend.balancer.sent[1] > 0
        posts = a.posts() + b.posts()
        assert len(posts) == 12 and len({digest for _, _, digest, _ in posts}) == 12
        assert [len(a.posts()), len(b.posts())] == backend.balancer.sent
        # The list is one pool: the same requests again come from the cache, whichever endpoint answered.
        backend.generate_all(requests, progress=False)
        assert len(a.posts()) + len(b.posts()) == 12 and backend.last_run.cache_hits == 12
