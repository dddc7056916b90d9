"""Typed settings, read from `CONTACTSYNC_*` environment variables and an optional config file.

Precedence (highest first): explicit keyword arguments, environment variables, the TOML config
file named by `CONTACTSYNC_CONFIG` (default `contactsync.toml` in the working directory, if it
exists), then the defaults below. Azure credentials are *not* settings of ours: azure-identity
reads its standard variables (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET or
AZURE_CLIENT_CERTIFICATE_PATH) itself, so they never pass through our config or our logs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def default_state_dir() -> Path:
    """Where local state lives (SQLite file, local broker data): `CONTACTSYNC_STATE_DIR`, else
    the platform's user state directory, never the directory a command was started from."""
    chosen = os.environ.get("CONTACTSYNC_STATE_DIR")
    return Path(chosen).resolve() if chosen else user_state_dir()


def user_state_dir(platform: str = sys.platform, env: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_STATE_HOME/contactsync` (`~/.local/state/contactsync`) on Linux and other Unix
    systems, `~/Library/Application Support/contactsync` on macOS, `%LOCALAPPDATA%\\contactsync`
    on Windows (the XDG Base Directory and the platforms' own conventions)."""
    home = Path(env.get("HOME") or Path.home())
    if platform == "win32":
        return Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local") / "contactsync"
    if platform == "darwin":
        return home / "Library" / "Application Support" / "contactsync"
    xdg = env.get("XDG_STATE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "state"
    return base / "contactsync"


def default_cache_dir() -> Path:
    """Where downloaded artifacts (the Kafka jars) are cached across runs and checkouts."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "contactsync"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CONTACTSYNC_",
        extra="ignore",
        toml_file=os.environ.get("CONTACTSYNC_CONFIG", "contactsync.toml"),
    )

    # --- Services. Empty means "no tenant configured": the sandbox uses the emulators. ---
    graph_base_url: str = Field(default="", description="Graph base URL up to and including /v1.0")
    bc_base_url: str = Field(
        default="", description="BC API base URL up to and including /api/v2.0"
    )
    bc_company: str = Field(default="", description="BC company id (GUID) or name")
    bc_scope: str = "https://api.businesscentral.dynamics.com/.default"
    graph_scope: str = "https://graph.microsoft.com/.default"

    # --- State ---
    database_url: str = Field(
        default_factory=lambda: f"sqlite:///{default_state_dir() / 'contactsync.db'}"
    )

    # --- Kafka ---
    # The standard, unprefixed variable wins; the prefixed one is accepted too.
    kafka_bootstrap_servers: str = Field(
        default="",
        validation_alias=AliasChoices(
            "KAFKA_BOOTSTRAP_SERVERS", "CONTACTSYNC_KAFKA_BOOTSTRAP_SERVERS"
        ),
        description="host:port[,host:port]; empty means the local broker (contactsync kafka up)",
    )
    topic_prefix: str = Field(default="", description="Prepended to every topic name")
    topic_partitions: int = Field(default=12, ge=1)
    topic_replication: int = Field(default=1, ge=1)
    topic_retention_ms: int = Field(default=7 * 24 * 3600 * 1000)
    deadletter_retention_ms: int = Field(default=14 * 24 * 3600 * 1000)
    kafka_version: str = "4.1.1"
    kafka_data_dir: Path = Field(default_factory=lambda: default_state_dir() / "kafka")
    cache_dir: Path = Field(default_factory=default_cache_dir)

    # --- Webhook endpoint ---
    webhook_public_url: str = Field(default="", description="Public base URL of the webhook")
    webhook_max_body_bytes: int = 1_000_000

    # --- Reconcile job (producers/reconcile.py) ---
    reconcile_schedule: str = Field(
        default="nightly",
        description="nightly (02:00 UTC) | off | every N[s|m|h|d] | 5-field cron, in UTC",
    )
    reconcile_jitter: float = Field(
        default=3600.0, ge=0,
        description="Seconds over which one run's per-user commands are spread",
    )

    # --- Logging ---
    log_level: str = "INFO"
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")

    # --- Traces (contactsync.tracing; the `otel` extra) ---
    otel_traces: bool = Field(
        default=False, description="Export OpenTelemetry traces over OTLP (OTEL_EXPORTER_OTLP_*)"
    )

    # --- Secrets we hold ourselves (never logged: SecretStr hides them in repr) ---
    admin_token: SecretStr | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls),
            file_secret_settings,
        )

    @property
    def uses_emulators(self) -> bool:
        """True when no tenant is configured: the sandbox then starts the emulators."""
        return not (self.graph_base_url or self.bc_base_url)


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
