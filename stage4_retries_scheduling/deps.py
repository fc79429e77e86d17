"""What the routes ask FastAPI for, one alias each: `redis: RedisDep`, `ledger: LedgerDep`,
`settings: SettingsDep`, `client: ClientDep`, for an event stream `streams: StreamsDep` and
`place: StreamPlaceDep`, for a task route `schedule: ScheduleDep`, and the jobs page's
`feed: FeedDep`."""

from collections.abc import AsyncIterator
from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from jobkit.dashboard import Feed
from jobkit.streams import Streams

from .config import Settings, get_settings
from .ledger import Ledger
from .scheduling import Schedule, read_schedule


# FastAPI runs a plain `def` dependency in a worker thread, in case it blocks. These only
# read an attribute, so they are `async def` and run on the event loop instead: a thread
# hop on every request is a cost worth not paying (the performance page has its size).
async def get_redis(request: Request) -> ArqRedis:
    return request.app.state.redis  # opened once, in main.lifespan


async def get_ledger(request: Request) -> Ledger:
    return request.app.state.ledger  # opened once, in main.lifespan


async def read_settings() -> Settings:
    return get_settings()  # read from the environment once, then cached


async def client_address(request: Request) -> str:
    # Who asks, for the limits per client: the address the connection came from. Behind a
    # proxy that is the proxy's, unless the server reads X-Forwarded-For (uvicorn does, from
    # --forwarded-allow-ips); a real application would count per authenticated user.
    return request.client.host if request.client else "unknown"


async def get_streams(request: Request) -> Streams:
    return request.app.state.streams  # made once, in main.lifespan


async def hold_a_stream_place(
    request: Request, client: Annotated[str, Depends(client_address)]
) -> AsyncIterator[None]:
    # Held while the response streams (FastAPI leaves a `yield` dependency after the
    # response has been sent), or a 429 when the client or the server has no place left.
    async with request.app.state.streams.place(client):
        yield


async def get_feed(request: Request) -> Feed:
    return request.app.state.feed  # made once, in main.lifespan


RedisDep = Annotated[ArqRedis, Depends(get_redis)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
SettingsDep = Annotated[Settings, Depends(read_settings)]
ClientDep = Annotated[str, Depends(client_address)]
StreamsDep = Annotated[Streams, Depends(get_streams)]
StreamPlaceDep = Annotated[None, Depends(hold_a_stream_place)]  # events: jobkit.streams
ScheduleDep = Annotated[Schedule, Depends(read_schedule)]  # run_at / delay_seconds: scheduling.py
FeedDep = Annotated[Feed, Depends(get_feed)]  # the jobs page's stream: jobkit.dashboard
