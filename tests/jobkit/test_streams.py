"""jobkit.streams: streams capped per client and in all, and one poll per followed key."""

import asyncio

import pytest
from fastapi import HTTPException

import jobkit.streams
from jobkit.streams import Streams


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(jobkit.streams, "EVENTS_POLL_S", 0.01)


def test_places_are_capped_per_client_and_in_all_and_freed_when_a_stream_ends(monkeypatch):
    monkeypatch.setattr(jobkit.streams, "MAX_STREAMS_PER_CLIENT", 2)
    monkeypatch.setattr(jobkit.streams, "MAX_STREAMS", 3)

    async def main() -> None:
        streams = Streams()
        async with streams.place("a"), streams.place("a"):
            with pytest.raises(HTTPException) as mine:
                async with streams.place("a"):
                    pass
            assert mine.value.status_code == 429
            assert mine.value.headers == {"Retry-After": str(jobkit.streams.STREAMS_RETRY_AFTER_S)}
            async with streams.place("b"):
                with pytest.raises(HTTPException, match="3 event streams are open"):
                    async with streams.place("c"):
                        pass
        async with streams.place("a"):  # freed
            assert streams.open == {"a": 1}
        assert not streams.open

    asyncio.run(main())


def test_the_pages_streams_have_places_of_their_own(monkeypatch):
    # A hundred open jobs pages must not take every place GET /jobs/{id}/events needs, nor
    # a hundred job watchers every page's.
    monkeypatch.setattr(jobkit.streams, "MAX_STREAMS", 1)
    monkeypatch.setattr(jobkit.streams, "MAX_PAGE_STREAMS", 2)

    async def main() -> None:
        streams = Streams()
        async with streams.place("a", page=True), streams.place("b", page=True):
            with pytest.raises(HTTPException, match="2 jobs pages' event streams are open"):
                async with streams.place("c", page=True):
                    pass
            async with streams.place("c"):  # a job's stream: still a place
                with pytest.raises(HTTPException, match="1 event streams are open"):
                    async with streams.place("d"):
                        pass
        assert not streams.open and not streams.pages

    asyncio.run(main())


def test_every_follower_of_a_key_shares_one_poll_until_it_has_ended():
    async def main() -> tuple[list[list[int]], int]:
        streams, reads, value = Streams(), [], {"now": 0}

        async def read(key: str) -> int:
            reads.append(key)
            value["now"] = min(value["now"] + 1, 3)
            return value["now"]

        async def follower() -> list[int]:
            return [v async for v in streams.follow("job", 0, read, ended=lambda v: v == 3)]

        seen = await asyncio.gather(*(follower() for _ in range(5)))
        streams.close()
        return seen, len(reads)

    seen, reads = asyncio.run(main())
    assert seen == [[0, 1, 2, 3]] * 5
    assert reads == 4  # three changes, then one more poll for late writes: one loop for all


def test_a_read_that_fails_ends_the_streams_of_that_key():
    async def main() -> list[int]:
        streams = Streams()

        async def broken(key: str) -> int:
            raise ConnectionError("the store is down")

        values = [v async for v in streams.follow("job", 7, broken, ended=lambda v: False)]
        assert streams.polls == {}
        return values

    assert asyncio.run(main()) == [7]


def test_a_stream_ends_after_its_longest_life(monkeypatch):
    monkeypatch.setattr(jobkit.streams, "EVENTS_MAX_S", 0.05)

    async def main() -> list[int]:
        streams = Streams()

        async def same(key: str) -> int:
            return 1

        return [v async for v in streams.follow("job", 1, same, ended=lambda v: False)]

    assert asyncio.run(main()) == [1]
