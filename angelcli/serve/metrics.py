"""Server counters and gauges, rendered in Prometheus' text exposition format for GET /metrics.

Written from the scheduler thread and the HTTP handlers, read by /metrics; one lock keeps them coherent.
tokens/s is measured over a sliding window of the last `window` seconds of generated tokens.
"""

from __future__ import annotations

import threading
import time
from collections import deque


class Metrics:
    def __init__(self, model: str, window: float = 10.0):
        self.model, self.window = model, window
        self.lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[str, int] = {}  # finish reason -> count (stop, length, cancelled, error)
        self.rejected: dict[int, int] = {}  # HTTP status -> requests refused before reaching the engine
        self.prompt_tokens = self.generation_tokens = 0
        self.decode_steps = self.decode_rows = 0
        self.decode_seconds = 0.0
        self.queue = self.batch = 0
        self.ttft_sum = self.ttft_count = 0.0
        self.latency_sum = 0.0
        self.spec_passes = self.spec_tokens = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps

    def set_gauges(self, *, queue: int, batch: int) -> None:
        with self.lock:
            self.queue, self.batch = queue, batch

    def step(self, rows: int, seconds: float = 0.0) -> None:
        with self.lock:
            self.decode_steps += 1
            self.decode_rows += rows
            self.decode_seconds += seconds

    def tokens(self, n: int = 1) -> None:
        now = time.monotonic()
        with self.lock:
            self.generation_tokens += n
            self._recent.append((now, n))
            while self._recent and self._recent[0][0] < now - self.window:
                self._recent.popleft()

    def reject(self, status: int) -> None:
        with self.lock:
            self.rejected[status] = self.rejected.get(status, 0) + 1

    def speculative(self, spec: dict) -> None:
        with self.lock:
            self.spec_passes += spec["verify_passes"]
            self.spec_tokens += spec["round_tokens"]

    def finished(self, reason: str, stats: dict) -> None:
        if stats.get("speculative"):
            self.speculative(stats["speculative"])
        with self.lock:
            self.requests[reason] = self.requests.get(reason, 0) + 1
            self.prompt_tokens += stats["prompt_tokens"]
            if stats.get("time_to_first_token") is not None:
                self.ttft_sum += stats["time_to_first_token"]
                self.ttft_count += 1
            self.latency_sum += stats["total_time"]

    def tokens_per_s(self) -> float:
        now = time.monotonic()
        with self.lock:
            recent = [(t, n) for t, n in self._recent if t >= now - self.window]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / min(span, self.window)

    def render(self) -> str:
        tps = self.tokens_per_s()
        lab = f'model="{self.model}"'
        with self.lock:
            done = sum(self.requests.values())
            lines = [
                "# HELP angel_requests_total Requests that reached the engine, by how they ended.",
                "# TYPE angel_requests_total counter",
                *[f'angel_requests_total{{{lab},finish_reason="{k}"}} {v}' for k, v in sorted(self.requests.items())],
                "# HELP angel_requests_rejected_total Requests refused before the engine, by HTTP status.",
                "# TYPE angel_requests_rejected_total counter",
                *[f'angel_requests_rejected_total{{{lab},status="{k}"}} {v}' for k, v in sorted(self.rejected.items())],
                "# HELP angel_prompt_tokens_total Prompt tokens of finished requests.",
                "# TYPE angel_prompt_tokens_total counter",
                f"angel_prompt_tokens_total{{{lab}}} {self.prompt_tokens}",
                "# HELP angel_generation_tokens_total Generated tokens.",
                "# TYPE angel_generation_tokens_total counter",
                f"angel_generation_tokens_total{{{lab}}} {self.generation_tokens}",
                "# HELP angel_queue_depth Requests waiting for a batch slot.",
                "# TYPE angel_queue_depth gauge",
                f"angel_queue_depth{{{lab}}} {self.queue}",
                "# HELP angel_batch_size Requests decoding now.",
                "# TYPE angel_batch_size gauge",
                f"angel_batch_size{{{lab}}} {self.batch}",
                "# HELP angel_decode_steps_total Batched decode steps; rows/steps is the mean batch size.",
                "# TYPE angel_decode_steps_total counter",
                f"angel_decode_steps_total{{{lab}}} {self.decode_steps}",
                "# TYPE angel_decode_rows_total counter",
                f"angel_decode_rows_total{{{lab}}} {self.decode_rows}",
                "# HELP angel_decode_seconds_total Time spent in batched decode forwards.",
                "# TYPE angel_decode_seconds_total counter",
                f"angel_decode_seconds_total{{{lab}}} {self.decode_seconds:.6f}",
                f"# HELP angel_generation_tokens_per_second Generated tokens per second over the last {self.window:g} s.",
                "# TYPE angel_generation_tokens_per_second gauge",
                f"angel_generation_tokens_per_second{{{lab}}} {tps:.3f}",
                "# HELP angel_time_to_first_token_seconds Time from arrival to the first token.",
                "# TYPE angel_time_to_first_token_seconds summary",
                f"angel_time_to_first_token_seconds_sum{{{lab}}} {self.ttft_sum:.6f}",
                f"angel_time_to_first_token_seconds_count{{{lab}}} {int(self.ttft_count)}",
                "# HELP angel_request_latency_seconds Time from arrival to the end of a request.",
                "# TYPE angel_request_latency_seconds summary",
                f"angel_request_latency_seconds_sum{{{lab}}} {self.latency_sum:.6f}",
                f"angel_request_latency_seconds_count{{{lab}}} {done}",
                "# HELP angel_spec_verify_passes_total Target passes of speculative decoding.",
                "# TYPE angel_spec_verify_passes_total counter",
                f"angel_spec_verify_passes_total{{{lab}}} {self.spec_passes}",
                "# HELP angel_spec_tokens_total Tokens those passes produced (accepted drafts + one each).",
                "# TYPE angel_spec_tokens_total counter",
                f"angel_spec_tokens_total{{{lab}}} {self.spec_tokens}",
                "# HELP angel_spec_acceptance_length Mean tokens per target pass (tau) since start.",
                "# TYPE angel_spec_acceptance_length gauge",
                f"angel_spec_acceptance_length{{{lab}}} {self.spec_tokens / self.spec_passes if self.spec_passes else 0:.4f}",
            ]
        return "\n".join(lines) + "\n"
