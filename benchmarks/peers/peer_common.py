"""What every peer script shares, whatever its interpreter (standard library only): the spec from
argv, the warm-up-apart summary of step times, timing of repeated calls, versions, the JSON line."""

from __future__ import annotations

import importlib.metadata
import json
import statistics
import sys
import time


def spec_from_argv() -> dict:
    return json.loads(sys.argv[1])


def summarise(times: list[float], steps: int, repeats: int) -> dict:
    """times[0] is the warm-up (compilation); then `repeats` rounds of `steps` steps; medians."""
    warm, rest = times[0], times[1:1 + steps * repeats]
    rounds = [rest[i * steps:(i + 1) * steps] for i in range(repeats)]
    return {
        'warmup_s': round(warm, 3),
        'round_medians_s': [round(statistics.median(r), 5) for r in rounds if r],
        'median_s': statistics.median(rest) if rest else None, 'steps_timed': len(rest)
    }


def time_calls(call, calls: int, repeats: int) -> dict:
    """`summarise` of one warm-up call and `repeats` rounds of `calls` calls of `call()`."""
    times = []
    for _ in range(1 + calls * repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return summarise(times, calls, repeats)


def versions(*names) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            out[n] = None
    return out


def emit(result: dict) -> None:
    print(json.dumps(result), flush=True)
