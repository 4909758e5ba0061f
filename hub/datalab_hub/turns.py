"""Server starts take turns: at most `size` of them do their work at once, lab-wide,
and the others wait in the order they came.

JupyterHub's own concurrent_spawn_limit answers a start beyond it with a 429 "try
again in N seconds": a freed slot then stays empty until somebody's retry, and each
waiting user comes back a few seconds after their turn was free. Its limit is kept,
higher, as the bound on starts waiting here (hub/README.md). asyncio.Semaphore would
do the waiting, but cannot say how many are ahead of a waiting start, which the spawn
page shows."""

import asyncio
import collections


class Turns:
    def __init__(self, size):
        self.size = size
        self.taken = 0
        self.waiting = collections.deque()  # futures, first come first

    def request(self):
        """A future done once the caller has a turn: at once when one is free. Give it
        back with `release`, whether it came or not (a start that failed or was cancelled)."""
        turn = asyncio.get_running_loop().create_future()
        if self.taken < self.size and not self.waiting:
            self.taken += 1
            turn.set_result(None)
        else:
            self.waiting.append(turn)
        return turn

    def ahead(self, turn):
        """Starts waiting ahead of this one (0 once it has its turn)."""
        return self.waiting.index(turn) if turn in self.waiting else 0

    def release(self, turn):
        """The turn given back, or the wait given up: the next one waiting gets it."""
        if turn in self.waiting:
            self.waiting.remove(turn)
            turn.cancel()
            return
        if turn.cancelled() or not turn.done():
            return  # never had one
        while self.waiting:
            following = self.waiting.popleft()
            if not following.done():
                following.set_result(None)  # handed over: as many taken as before
                return
        self.taken -= 1
