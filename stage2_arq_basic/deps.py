"""What the routes ask FastAPI for, one alias each: `redis: RedisDep`, `settings: SettingsDep`."""

from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from .config import Settings, get_settings


# FastAPI runs a plain `def` dependency in a worker thread, in case it blocks. These only
# read an attribute, so they are `async def` and run on the event loop instead: a thread
# hop on every request is a cost worth not paying (the performance page has its size).
async def get_redis(request: Request) -> ArqRedis:
    return request.app.state.redis  # opened once, in main.lifespan


async def read_settings() -> Settings:
    return get_settings()  # read from the environment once, then cached


RedisDep = Annotated[ArqRedis, Depends(get_redis)]
SettingsDep = Annotated[Settings, Depends(read_settings)]
