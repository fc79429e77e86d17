from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Read from the environment (or a `.env` file); the defaults need neither."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    app_name: str = "Stage 3: a durable job ledger"
    app_description: str = (  # the top of /docs and /redoc: where this stage is explained
        "Explained in the tutorial's `docs/stages/stage3.md`, which `make docs` serves at "
        "http://127.0.0.1:8001/stages/stage3/"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"  # `make run` sets this to its embedded Valkey
    queue_name: str = "arq:queue"
    redis_timeout_s: float = 1.0  # Redis down or stuck: a 503 after this, not a hang
    job_timeout_s: float = 30.0  # the worker's job timeout; worker.py says why it matters
    max_jobs: int = 10  # how many jobs a worker runs at once; worker.py says more
    max_body_bytes: int = 16 * 1024  # task arguments are a few numbers; 16 KiB is plenty
    log_level: str = "INFO"
    data_dir: Path = Path(".data/stage3")  # git-ignored; `make run` sets the same
    database_url: str = ""  # any SQLAlchemy URL; empty: a SQLite file in data_dir

    def model_post_init(self, _context: object) -> None:
        self.database_url = self.database_url or f"sqlite:///{self.data_dir / 'jobs.db'}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
