from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Read from the environment (or a `.env` file); the defaults need neither."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    app_name: str = "Stage 1: BackgroundTasks"
    app_description: str = (  # the top of /docs and /redoc: where this stage is explained
        "Explained in the tutorial's `docs/stages/stage1.md`, which `make docs` serves at "
        "http://127.0.0.1:8001/stages/stage1/"
    )
    max_body_bytes: int = 16 * 1024  # task arguments are a few numbers; 16 KiB is plenty
    log_level: str = "INFO"


@lru_cache
def get_settings() -> Settings:
    return Settings()
