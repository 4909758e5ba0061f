import asyncio

import pytest

from datalab_scoring.batching import Batcher


def test_requests_arriving_together_share_one_model_call():
    calls = []

    def predict(rows):
        calls.append(len(rows))
        return [r[0] * 2 for r in rows]

    async def run():
        batcher = Batcher(predict, window_s=0.002)
        results = await asyncio.gather(*(batcher.score([[i], [i + 0.5]]) for i in range(20)))
        return results

    results = asyncio.run(run())
    assert results[3] == [6, 7] and results[19] == [38, 39]  # each request gets its own rows back
    assert sum(calls) == 40 and len(calls) < 20              # and they were scored in batches


def test_a_failing_model_call_fails_those_requests_and_the_next_ones_still_run():
    state = {"fail": True}

    def predict(rows):
        if state["fail"]:
            state["fail"] = False
            raise RuntimeError("model exploded")
        return [0.5] * len(rows)

    async def run():
        batcher = Batcher(predict, window_s=0)
        with pytest.raises(RuntimeError, match="exploded"):
            await batcher.score([[1]])
        return await batcher.score([[1]])

    assert asyncio.run(run()) == [0.5]


def test_each_request_is_told_how_long_it_waited_and_how_long_its_batch_took():
    import time

    timings = []

    def slow(rows):
        time.sleep(0.02)
        return [0.1] * len(rows)

    async def run():
        batcher = Batcher(slow, max_batch=1, window_s=0,
                          on_request=lambda queue_s, model_s: timings.append((queue_s, model_s)))
        await asyncio.gather(*(batcher.score([[i]]) for i in range(3)))

    asyncio.run(run())
    assert len(timings) == 3 and all(model_s >= 0.02 for _, model_s in timings)
    # one request a call: the second waited for the first call, the third for both
    assert [q >= 0.02 * n for n, (q, _) in enumerate(timings)] == [True, True, True]
