"""Token counters and the process start time, read from vLLM's /metrics page."""

from __future__ import annotations

from gateway.records import EngineCounters
from gateway.routing.engine_stats import parse_engine_stats

PAGE = """# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.76412345e+09
vllm:num_requests_running{engine="0",model_name="m"} 0.0
vllm:num_requests_waiting{engine="0",model_name="m"} 0.0
vllm:prompt_tokens_total{engine="0",model_name="m"} 1200.0
vllm:prompt_tokens_total{engine="1",model_name="m"} 34.0
vllm:prompt_tokens_created{engine="0",model_name="m"} 1.76412345e+09
vllm:prompt_tokens_cached_total{engine="0",model_name="m"} 512.0
vllm:generation_tokens_total{engine="0",model_name="m"} 4.5e+03
vllm:generation_tokens_total{engine="1",model_name="m"} 7.0
vllm:prefix_cache_hits_total{engine="0",model_name="m"} 512.0
vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1234.0
vllm:request_prompt_tokens_sum{engine="0",model_name="m"} 99999.0
"""


def test_counters_are_summed_over_label_sets_and_the_incarnation_is_the_start_time() -> None:
    stats = parse_engine_stats(PAGE)
    assert stats.counters == EngineCounters(1234, 4507, 512, 512, 1234)
    assert stats.incarnation == 1.76412345e09
    assert (stats.running, stats.waiting) == (0, 0)


def test_a_page_without_token_counters_has_none() -> None:
    stats = parse_engine_stats('vllm:num_requests_running{model_name="m"} 2\n')
    assert stats.counters is None and stats.incarnation == 0.0 and stats.running == 2
