"""`make run`'s supervisor starts an exited worker again, waiting longer each time it exits
soon after starting (a Redis that stays down), and from the shortest wait again once it ran
well for a while: after a few failovers months apart, a worker still comes back at once."""

from devkit.run import HEALTHY_S, RESTART_BACKOFF_S, Backoff


def test_a_worker_that_keeps_exiting_at_once_waits_longer_each_time_up_to_a_cap():
    backoff = Backoff()
    delays = [backoff.delay(ran_s=0.1) for _ in range(len(RESTART_BACKOFF_S) + 2)]
    assert delays == [*RESTART_BACKOFF_S, RESTART_BACKOFF_S[-1], RESTART_BACKOFF_S[-1]]


def test_a_worker_that_ran_well_before_exiting_starts_again_after_the_shortest_wait():
    backoff = Backoff()
    for _ in range(len(RESTART_BACKOFF_S)):  # a Redis down for a while: the cap reached
        backoff.delay(ran_s=0.1)
    assert backoff.delay(ran_s=HEALTHY_S) == RESTART_BACKOFF_S[0]  # then a failover, later
    assert backoff.delay(ran_s=0.1) == RESTART_BACKOFF_S[1]
