"""Server starts taking turns (datalab_hub.turns): in order, a freed turn handed on at once,
a wait given up leaves no hole."""

import asyncio

from datalab_hub.turns import Turns


def test_turns_go_in_order_and_a_freed_one_is_handed_on():
    async def run():
        turns = Turns(2)
        first, second, third, fourth = (turns.request() for _ in range(4))
        assert first.done() and second.done() and not third.done() and not fourth.done()
        assert (turns.ahead(third), turns.ahead(fourth)) == (0, 1)
        turns.release(second)
        assert third.done() and not fourth.done() and turns.ahead(fourth) == 0
        turns.release(first)
        turns.release(third)
        assert fourth.done()
        turns.release(fourth)
        assert turns.taken == 0 and not turns.waiting
        assert turns.request().done()  # all free again

    asyncio.run(run())


def test_a_start_giving_up_its_wait_leaves_no_hole_and_takes_no_turn():
    async def run():
        turns = Turns(1)
        holder, quitter, next_one = turns.request(), turns.request(), turns.request()
        turns.release(quitter)  # JupyterHub gave up on it while it waited
        assert quitter.cancelled() and turns.ahead(next_one) == 0
        waiter = asyncio.ensure_future(asyncio.wait_for(asyncio.shield(next_one), 5))
        turns.release(holder)
        await waiter
        turns.release(next_one)
        assert turns.taken == 0 and not turns.waiting

    asyncio.run(run())


def test_a_cancelled_waiter_is_skipped_when_a_turn_is_handed_on():
    async def run():
        turns = Turns(1)
        holder, cancelled, waiting = turns.request(), turns.request(), turns.request()
        task = asyncio.ensure_future(cancelled)  # a start's task awaiting its turn, then cancelled
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.sleep(0)
        assert cancelled.cancelled()
        turns.release(holder)
        assert waiting.done() and not waiting.cancelled()
        turns.release(cancelled)  # its start's cleanup gives back nothing
        assert turns.taken == 1
        turns.release(waiting)
        assert turns.taken == 0

    asyncio.run(run())
