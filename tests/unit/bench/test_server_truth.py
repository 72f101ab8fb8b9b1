"""The server's own figures for a window are differences of its counters, and exact means of its histograms."""

from servelab.bench.server_truth import VLLM_SAMPLES, ServerWindow


def _counters(**values: float) -> dict[str, float]:
    names = [name for group in VLLM_SAMPLES.values() for name in group]
    return {name: values.get(name.removeprefix("vllm:"), 0.0) for name in names}


def test_figures_are_what_happened_inside_the_window() -> None:
    window = ServerWindow("http://x/metrics")
    window.before = _counters(
        generation_tokens_total=100, time_to_first_token_seconds_sum=9, time_to_first_token_seconds_count=3
    )
    window.after = _counters(
        generation_tokens_total=164,
        request_success_total=2,
        time_to_first_token_seconds_sum=10,
        time_to_first_token_seconds_count=5,
        request_time_per_output_token_seconds_sum=0.3,
        request_time_per_output_token_seconds_count=2,
    )
    figures = window.figures()
    assert figures["output_tokens_total"] == 64 and figures["requests"] == 2
    assert figures["ttft_mean_s"] == 0.5  # (10 - 9) s over (5 - 3) requests: earlier requests do not count
    assert abs(figures["tpot_mean_s"] - 0.15) < 1e-12


def test_a_window_with_no_requests_has_no_mean() -> None:
    window = ServerWindow("http://x/metrics")
    window.before = window.after = _counters(time_to_first_token_seconds_count=4)
    assert window.figures()["ttft_mean_s"] is None and window.figures()["output_tokens_total"] == 0
