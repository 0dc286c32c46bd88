"""Settings: the one place defaults live. Environment variables use the prefix ``WTB_``."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WTB_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".wtb",
                       description="Where the embedded SQLite database and local files live.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite:///<home>/wtb.db. PostgreSQL: "
                    "postgresql://user@host:6432/db (through PgBouncer in transaction mode).")
    auto_migrate: bool | None = Field(
        default=None, description="Apply migrations on open; default: only for SQLite.")
    sqlite_busy_timeout_ms: int = 30_000
    db_pool_size: int = 5
    reconnect_seconds: float = Field(
        default=30.0, description="How long a dropped database connection is retried.")
    lease_seconds: float = Field(
        default=30.0, gt=0,
        description="A running execution's lease; renewed at each node boundary and by a "
                    "heartbeat, so a crashed runner's executions can be taken over after it.")

    orchestrator_name: str = Field(
        default="wtb-orchestrator",
        description="Name of the batch orchestrator actor (namespace \"wtb\"); one per "
                    "database a cluster serves.")
    workspace_ignore: list[str] = Field(
        default_factory=list,
        description="Ignore patterns for every workspace (JSON list, e.g. '[\"*.log\"]'); a "
                    "run adds its own. Ignored paths are neither recorded nor restored.")
    workspace_max_file_bytes: int = Field(
        default=1 << 30, gt=0,
        description="A workspace file larger than this fails the node that left it.")
    workspace_watch: bool = Field(
        default=True,
        description="Watch a running execution's workspace (Linux inotify) so that each "
                    "checkpoint examines only the files changed since the last one. Turn "
                    "off for a workspace on a network file system or written through "
                    "shared memory maps, which send no events.")
    gc_grace_seconds: float = Field(
        default=3600.0, ge=0,
        description="`wtb gc` keeps unreachable blobs younger than this, so blobs a writer "
                    "is about to reference are never deleted under it.")

    executor_idle_seconds: float = Field(
        default=60.0, ge=0,
        description="How long an idle batch executor is kept warm for the next batch.")
    batch_concurrency: int = Field(
        default=8, ge=1,
        description="Batches the orchestrator drives at once. The rest wait their turn, in "
                    "the order they came, as pending: cheaper than many batches polling for "
                    "the same executors.")
    batch_retry_seconds: float = Field(
        default=1.0, gt=0,
        description="Wait before a batch's driver that failed (the database away, say) "
                    "tries again, doubled at each failure in a row. After 5 the batch yields "
                    "its turn and stays running; it is tried again 60 times this later, "
                    "then up to 16 times longer at each give-up, until it runs.")
    batch_niceness: int = Field(
        default=4, ge=0, le=19,
        description="Added to the niceness of the batch orchestrator and executors, so the HTTP "
                    "API and other interactive work on the same machines come first; batch "
                    "work still takes every idle CPU.")
    batch_sched_idle: bool = Field(
        default=True,
        description="Run the batch orchestrator and executors under SCHED_IDLE (Linux): they "
                    "get a CPU only when no other thread wants it, and every idle one.")

    # -- the HTTP API (Ray Serve) ---------------------------------------------------------
    api_host: str = Field(default="127.0.0.1", description="Where the HTTP API listens.")
    api_port: int = Field(default=8000, ge=1, le=65535)
    api_token: SecretStr | None = Field(
        default=None,
        description="Bearer token every route but /healthz requires. Unset on a loopback "
                    "host: one is generated into <home>/api_token. Required on any other host.")
    workflows: dict[str, str] = Field(
        default_factory=lambda: {"astro-qa": "wtb_ray.examples.rag:workflow",
                                 "astro-report": "wtb_ray.examples.report:workflow"},
        description="The workflows the HTTP API may run: name -> package.module:attr (JSON). "
                    "A request names one of these; it never names code to import.")
    api_max_body_bytes: int = Field(default=1 << 20, gt=0,
                                    description="Larger request bodies are refused (413).")
    api_max_cases: int = Field(default=10_000, gt=0, description="Cases per batch request.")
    api_max_cells: int = Field(
        default=50_000, gt=0,
        description="Executions one batch request may create (combinations x cases x repeats).")
    api_request_timeout_s: float = Field(
        default=30.0, gt=0, description="Ray Serve's end-to-end request timeout.")
    api_max_ongoing_requests: int = Field(
        default=100, gt=0, description="Requests one replica handles at once.")
    api_num_cpus: float = Field(
        default=0.0, ge=0,
        description="CPUs each API replica reserves in Ray's scheduling (never a limit). 0 "
                    "leaves every CPU to batch executors; batch_niceness still lets the API "
                    "answer first.")
    api_event_settle_s: float = Field(
        default=1.0, ge=0,
        description="PostgreSQL only: events are streamed once they are this old. Outbox ids "
                    "are drawn before their transaction commits, so a lower id can become "
                    "visible after a higher one; waiting keeps a Last-Event-ID cursor from "
                    "passing it. (SQLite commits in id order.)")
    api_event_stream_s: float = Field(
        default=20.0, gt=0,
        description="An event stream ends after this (below the request timeout) and the "
                    "client reconnects with Last-Event-ID, missing nothing.")

    # -- the outbox relay, webhooks and the integrity checker -----------------------------
    outbox_relay_name: str = Field(
        default="wtb-outbox-relay", description="Name of the outbox relay actor (\"wtb\").")
    event_feed_name: str = Field(
        default="wtb-event-feed",
        description="Name of the event feed actor that event streams wait on (\"wtb\").")
    integrity_cron_name: str = Field(
        default="wtb-integrity-cron", description="Name of the integrity checker actor.")
    outbox_poll_interval_seconds: float = Field(
        default=0.2, gt=0, description="How often an idle relay looks for new events.")
    outbox_batch_size: int = Field(default=500, ge=1, le=10_000,
                                   description="Events a relay claims per round.")
    outbox_claim_seconds: float = Field(
        default=30.0, gt=1,
        description="How long a claim holds its events; a relay that dies mid-delivery "
                    "leaves them to another relay after this.")
    outbox_max_attempts: int = Field(
        default=8, ge=1,
        description="Dead-letter threshold: failed deliveries after which an event is dead "
                    "(`wtb outbox retry-dead` gives it back).")
    outbox_backoff_seconds: float = Field(
        default=1.0, gt=0, description="Delay before an event's first retry; it doubles.")
    outbox_backoff_max_seconds: float = Field(default=300.0, gt=0,
                                              description="Longest delay between retries.")
    outbox_stuck_seconds: float = Field(
        default=600.0, gt=0,
        description="The integrity checker reports events undelivered for longer than this.")
    outbox_consumers: list[str] = Field(
        default_factory=list,
        description="More outbox consumers: package.module:factory references (JSON list); "
                    "each factory takes the Settings and returns a consumer.")
    event_feed_size: int = Field(default=10_000, ge=100,
                                 description="Delivered events the event feed holds.")
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signs webhook deliveries of batches whose spec gives no secret of its "
                    "own. Read where the relay runs; never passed to actors as an argument.")
    webhook_timeout_seconds: float = Field(default=10.0, gt=0,
                                           description="Time a webhook POST may take.")
    integrity_interval_seconds: float = Field(
        default=3600.0, gt=0, description="How often the integrity cron actor runs the checks.")
    integrity_repair: bool = Field(
        default=True, description="Whether the integrity cron actor repairs what it finds.")
    integrity_max_attempts: int = Field(
        default=3, ge=1,
        description="An execution (not in a batch) whose runner died after this many "
                    "attempts is failed by the integrity checker instead of requeued.")

    @property
    def url(self) -> str:
        return self.database_url or f"sqlite:///{self.home.expanduser() / 'wtb.db'}"

    def for_actors(self) -> dict:
        """What actors are built from: the resolved database URL, and no secrets."""
        values = self.model_dump(mode="json", exclude={"api_token", "webhook_secret"})
        values["database_url"] = self.url
        return values

    def as_env(self) -> dict[str, str]:
        """Every setting as the WTB_* variable that reproduces it in another process (lists
        and mappings as JSON), the database URL resolved; secrets included when set."""
        env = {}
        for name, value in self.model_dump(mode="json").items():
            if value is None:
                continue
            if name in ("api_token", "webhook_secret"):  # secrets dump as stars otherwise
                value = getattr(self, name).get_secret_value()
            env[f"WTB_{name.upper()}"] = (json.dumps(value) if isinstance(value, (dict, list))
                                          else str(value))
        env["WTB_DATABASE_URL"] = self.url
        return env

    def with_database(self, url: str | None) -> Settings:
        return self if not url else self.model_copy(update={"database_url": url})
