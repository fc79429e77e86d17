from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Your app's own settings. DATABASE_URL is also the name the stage's settings read
    (myapp/jobs/config.py), so the ledger's tables go into this same database."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    app_name: str = "My app"
    database_url: str = "sqlite:///app.db"
    max_body_bytes: int = 64 * 1024


@lru_cache
def get_settings() -> Settings:
    return Settings()
