"""The rates measured on real endpoints (stairflow._backends.meter), fed exact timings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stairflow._backends.meter import MAX_AGE_S, Meter, RateCache, Sample, theil_sen
from stairflow._prompts import Message

URL, MODEL = "http://h/v1", "m"


def request(prompt: int, *, latency: float = 0.2, prefill: float = 1000.0, decode: float = 50.0,
            tokens: int = 20, cached: int = 0, sent: float = 0.0, extra: float = 0.0) -> Sample:
    """A request to a server with exactly these rates (4 characters per prompt token, 5 per
    output token); ``extra``: time it waited in a queue."""
    first = sent + latency + (prompt - cached) / prefill + extra
    return Sample(sent, first, first + (tokens - 1) / decode, tokens, 4 * prompt, 5 * tokens,
                  prompt, cached)


def test_exact_timings_give_exact_rates() -> None:
    meter = Meter()
    for prompt in (100, 300, 500, 900):
        meter.add(URL, MODEL, request(prompt))
    measured = meter.measured(URL, MODEL)
    assert measured.latency_s == pytest.approx(0.2)
    assert measured.prefill_tps == pytest.approx(1000.0)
    assert measured.decode_tps == pytest.approx(50.0)
    assert measured.requests == 4
    rates = meter.rates(URL, MODEL)
    assert rates is not None
    assert (rates.latency_s, rates.prefill_tps, rates.decode_tps) == pytest.approx((0.2, 1000, 50))
    assert rates.count([Message("user", "x" * 400)], "") == 100  # 4 characters a token
    assert rates.prompt_tokens_per_token >= 1.0


def test_cached_prompt_tokens_are_not_counted_as_read() -> None:
    meter = Meter()
    for prompt, cached in ((400, 0), (800, 600), (1200, 600), (2000, 0)):
        meter.add(URL, MODEL, request(prompt, cached=cached))
    measured = meter.measured(URL, MODEL)
    assert measured.prefill_tps == pytest.approx(1000.0)
    assert measured.latency_s == pytest.approx(0.2)


def test_a_few_queued_requests_do_not_move_the_estimate() -> None:
    meter = Meter()
    for i, prompt in enumerate(range(100, 1700, 100)):
        meter.add(URL, MODEL, request(prompt, extra=3.0 if i % 5 == 0 else 0.0))
    measured = meter.measured(URL, MODEL)
    assert measured.latency_s == pytest.approx(0.2, rel=0.15)
    assert measured.prefill_tps == pytest.approx(1000.0, rel=0.15)


def test_no_rates_until_two_prompt_sizes_and_a_decode_rate() -> None:
    meter = Meter()
    assert meter.rates(URL, MODEL) is None
    meter.add(URL, MODEL, request(200))
    meter.add(URL, MODEL, request(202))  # too alike to tell latency from prefill
    assert meter.rates(URL, MODEL) is None
    assert meter.measured(URL, MODEL).decode_tps == pytest.approx(50.0)
    meter.add(URL, MODEL, request(600))
    assert meter.rates(URL, MODEL) is not None


def test_a_server_that_reports_no_usage_is_measured_from_the_prompt_s_characters() -> None:
    meter = Meter()
    for prompt in (100, 300, 700):
        s = request(prompt)
        meter.add(URL, MODEL, Sample(s.sent, s.first, s.last, s.tokens, s.prompt_chars,
                                     s.output_chars))  # no prompt_tokens
    measured = meter.measured(URL, MODEL)
    assert measured.prefill_tps == pytest.approx(1000.0)  # 4 characters a token assumed


def test_a_higher_latency_server_is_told_apart() -> None:
    near, far = Meter(), Meter()
    for prompt in (100, 500, 900):
        near.add(URL, MODEL, request(prompt, latency=0.02))
        far.add(URL, MODEL, request(prompt, latency=1.0))
    assert near.measured(URL, MODEL).latency_s == pytest.approx(0.02)
    assert far.measured(URL, MODEL).latency_s == pytest.approx(1.0)


def test_theil_sen_needs_points_apart() -> None:
    assert theil_sen([(1, 1), (1.5, 2)], 8) is None
    assert theil_sen([(0, 1), (10, 2), (20, 3)], 8) == pytest.approx((1, 0.1))


def test_the_cache_keeps_fresh_samples_across_runs(tmp_path: Path) -> None:
    cache = RateCache(tmp_path / "rates.json")
    meter = Meter()
    for prompt in (100, 500, 900):
        meter.add(URL, MODEL, request(prompt))
    meter.add("http://old/v1", MODEL, request(100), wall=1.0)  # long ago
    cache.save(meter)
    again = Meter()
    cache.load_into(again)
    assert again.measured(URL, MODEL).latency_s == pytest.approx(0.2)
    assert again.measured(URL, MODEL).requests == 3
    assert again.measured("http://old/v1", MODEL).requests == 0  # older than MAX_AGE_S
    assert MAX_AGE_S <= 7 * 24 * 3600


@pytest.mark.parametrize("content", ["", "not json", "[]", '{"a": 1}', '{"u\\nm": [[1, "x"]]}',
                                  '{"u\\nm": [["a", 0, 1, 2, 3, 4, 5]]}'])
def test_a_broken_cache_file_is_ignored(tmp_path: Path, content: str) -> None:
    path = tmp_path / "rates.json"
    path.write_text(content)
    meter = Meter()
    RateCache(path).load_into(meter)
    assert all(meter.measured(*k).requests == 0 for k in meter.endpoints())


def test_the_cache_file_is_plain_json(tmp_path: Path) -> None:
    meter = Meter()
    meter.add(URL, MODEL, request(100))
    RateCache(tmp_path / "r.json").save(meter)
    data = json.loads((tmp_path / "r.json").read_text())
    assert list(data) == [f"{URL}\n{MODEL}"]
