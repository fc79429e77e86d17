"""What the routes ask FastAPI for, one alias each: `redis: RedisDep`, `ledger: LedgerDep`,
`settings: SettingsDep`, and for a task route `schedule: ScheduleDep`."""

from typing import Annotated

from arq.connections import ArqRedis
from fastapi import Depends, Request

from .config import Settings, get_settings
from .ledger import Ledger
from .scheduling import Schedule, read_schedule


def get_redis(request: Request) -> ArqRedis:
    return request.app.state.redis  # opened once, in main.lifespan


def get_ledger(request: Request) -> Ledger:
    return request.app.state.ledger  # opened once, in main.lifespan


RedisDep = Annotated[ArqRedis, Depends(get_redis)]
LedgerDep = Annotated[Ledger, Depends(get_ledger)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ScheduleDep = Annotated[Schedule, Depends(read_schedule)]  # run_at / delay_seconds: scheduling.py
