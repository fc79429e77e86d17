from functools import cached_property, lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from jobkit.ssrf import IPNetwork, parse_allowlist


class Settings(BaseSettings):
    """Read from the environment (or a `.env` file); the defaults need neither."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    app_name: str = "Stage 4: retries and scheduling"
    app_description: str = (  # the top of /docs and /redoc: where this stage is explained
        "Explained in the tutorial's `docs/stages/stage4.md`, which `make docs` serves at "
        "http://127.0.0.1:8001/stages/stage4/"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"  # `make run` sets this to its embedded Valkey
    queue_name: str = "arq:queue"
    redis_timeout_s: float = 1.0  # Redis down or stuck: a 503 after this, not a hang
    job_timeout_s: float = 30.0  # the worker's job timeout; worker.py says why it matters
    max_jobs: int = 10  # how many jobs a worker runs at once; worker.py says more
    max_body_bytes: int = 16 * 1024  # task arguments are a few numbers; 16 KiB is plenty
    log_level: str = "INFO"
    data_dir: Path = Path(".data/stage4")  # git-ignored; `make run` sets the same
    database_url: str = ""  # any SQLAlchemy URL; empty: a SQLite file in data_dir
    # fetch(url): retries, backoff and limits
    fetch_max_tries: int = 5  # attempts in all, the first included
    fetch_base_delay_s: float = 1.0  # backoff before try n is uniform in [0, base * 2^(n-1)]...
    fetch_max_delay_s: float = 60.0  # ...capped here
    fetch_max_retry_after_s: float = 300.0  # a longer Retry-After fails the job instead
    fetch_timeout_s: float = 10.0  # per HTTP request: connect, each read, ...
    fetch_max_bytes: int = 1024 * 1024  # a bigger response body fails the job
    fetch_max_redirects: int = 5
    # Networks fetch may reach even though they are internal (SSRF guard), e.g. ["10.1.2.0/24"]
    fetch_allowlist: list[str] = []
    # Scheduling and idempotency
    max_defer_s: float = 7 * 24 * 3600  # run_at / delay_seconds further out than this: 422
    idempotency_ttl_s: int = 24 * 3600  # how long an Idempotency-Key is remembered
    # Longer than creating a job takes (the ledger's 5 s lock wait, a few Redis round trips),
    # short enough that a key a crashed API left claimed frees itself soon, not after a day.
    idempotency_claim_ttl_s: int = 30  # how long a request may hold a key while it creates the job
    # Seeing the queue (jobkit.observe): GET /metrics on the API; each worker's own metrics
    # port (None: none; 0: a free one, which GET /queue shows); one trace from the request to
    # each try ("otlp", "console" or "file:<path>"; "": off); JSON log lines naming their job.
    metrics: bool = True
    worker_metrics_port: int | None = None
    worker_metrics_host: str = "127.0.0.1"  # the address it listens on: this host's own
    tracing: str = ""
    json_logs: bool = False

    def model_post_init(self, _context: object) -> None:
        self.database_url = self.database_url or f"sqlite:///{self.data_dir / 'jobs.db'}"

    @cached_property
    def fetch_allowlist_networks(self) -> list[IPNetwork]:
        return parse_allowlist(self.fetch_allowlist)


@lru_cache
def get_settings() -> Settings:
    return Settings()
