"""Micro-batching: requests that arrive while the model is busy are scored
together in one call of the model. No window is waited by default: a lone
request paid it in full (asyncio's timer: 1-2 ms at p50 for a 0.5 ms window,
measured with bench/scoring.py), and under load the batches form anyway."""

import asyncio
import time


class Batcher:
    def __init__(self, predict, max_batch=256, window_s=0.0, on_batch=None, on_request=None):
        self.predict = predict          # list of rows -> list of probabilities (blocking, fast)
        self.max_batch = max_batch
        self.window_s = window_s
        self.on_batch = on_batch or (lambda size: None)
        # per request: (seconds it waited for the model, seconds of its batch's model call)
        self.on_request = on_request or (lambda queue_s, model_s: None)
        self.queue = asyncio.Queue()
        self.task = None

    async def score(self, rows):
        if self.task is None:  # started by the first request, on the server's loop
            self.task = asyncio.get_running_loop().create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((rows, future, time.perf_counter()))
        return await future

    async def _run(self):
        while True:
            pending = [await self.queue.get()]
            size = len(pending[0][0])
            if self.window_s and self.queue.empty():
                await asyncio.sleep(self.window_s)
            while not self.queue.empty() and size < self.max_batch:
                item = self.queue.get_nowait()
                pending.append(item)
                size += len(item[0])
            rows = [row for item, _, _ in pending for row in item]
            called = time.perf_counter()
            try:
                scores = self.predict(rows)
            except Exception as e:  # a model failure fails these requests, not the server
                for _, future, _ in pending:
                    if not future.done():
                        future.set_exception(e)
                continue
            returned = time.perf_counter()
            self.on_batch(len(rows))
            start = 0
            for item, future, queued in pending:
                self.on_request(called - queued, returned - called)
                if not future.done():
                    future.set_result(scores[start:start + len(item)])
                start += len(item)
