from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Read from the environment (or a `.env` file); the defaults need neither."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    app_name: str = "Stage 2: ARQ + Redis"
    app_description: str = (  # the top of /docs and /redoc: where this stage is explained
        "Explained in the tutorial's `docs/stages/stage2.md`, which `make docs` serves at "
        "http://127.0.0.1:8001/stages/stage2/"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"  # `make run` sets this to its embedded Valkey
    queue_name: str = "arq:queue"
    redis_timeout_s: float = 1.0  # Redis down or stuck: a 503 after this, not a hang
    job_timeout_s: float = 30.0  # the worker's job timeout; worker.py says why it matters
    max_jobs: int = 10  # how many jobs a worker runs at once; worker.py says more
    max_body_bytes: int = 16 * 1024  # task arguments are a few numbers; 16 KiB is plenty
    log_level: str = "INFO"


@lru_cache
def get_settings() -> Settings:
    return Settings()
