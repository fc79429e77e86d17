"""What the routes ask FastAPI for, one alias each: `redis: RedisDep`, `settings: SettingsDep`."""

from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from .config import Settings, get_settings


def get_redis(request: Request) -> ArqRedis:
    return request.app.state.redis  # opened once, in main.lifespan


RedisDep = Annotated[ArqRedis, Depends(get_redis)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
