"""Typed settings, read from `CONTACTSYNC_*` environment variables and an optional config file.

Precedence (highest first): explicit keyword arguments, environment variables, the TOML config
file named by `CONTACTSYNC_CONFIG` (default `contactsync.toml` in the working directory, if it
exists), then the defaults below. Azure credentials are *not* settings of ours: we only pick
their kind (`azure_credential`); azure-identity reads its standard variables (AZURE_TENANT_ID,
AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, ...) itself, so they never pass through our config or logs.
"""

from __future__ import annotations

import os
import socket
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
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


class ConfigError(RuntimeError):
    """The settings cannot work; the message says which to set."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CONTACTSYNC_",
        extra="ignore",
    )

    # --- Services. Empty means "no tenant configured": the sandbox uses the emulators. ---
    graph_base_url: str = Field(default="", description="Graph base URL up to and including /v1.0")
    bc_base_url: str = Field(
        default="", description="BC API base URL up to and including /api/v2.0"
    )
    bc_company: str = Field(default="", description="BC company id (GUID) or name")
    bc_poll_seconds: float = Field(
        default=30.0, gt=0,
        description="With a live BC subscription: how often the change feed queries BC anyway "
        "(a notification can be lost); without one it polls every 5 s",
    )
    bc_deletion_scan_seconds: float = Field(
        default=60.0, gt=0,
        description="Without a live BC subscription: how often the change feed compares the "
        "ids of BC's persons with the links to find deletions",
    )
    http_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a Graph or BC request may wait for an answer "
        "before it is retried (each retry prints a line): a hung service is never silent long")
    bc_scope: str = "https://api.businesscentral.dynamics.com/.default"
    graph_scope: str = "https://graph.microsoft.com/.default"
    azure_credential: str = Field(
        default="auto",
        description="auto | secret | certificate | workload-identity | managed-identity | "
                    "azure-cli | environment (contactsync/credentials.py)",
    )

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
        description="host:port[,host:port]; required (`contactsync kafka up` prints a local one)",
    )
    topic_prefix: str = Field(default="", description="Prepended to every topic name")
    topic_partitions: int = Field(default=12, ge=1)
    topic_replication: int = Field(default=1, ge=1)
    topic_retention_ms: int = Field(default=7 * 24 * 3600 * 1000)
    deadletter_retention_ms: int = Field(default=14 * 24 * 3600 * 1000)
    # Client security (every producer, consumer and admin client: contactsync/kafka/security.py)
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = (
        "PLAINTEXT"
    )
    kafka_sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None
    ) = None
    kafka_sasl_username: str = ""
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = Field(
        default=None, description="A file holding the SASL password (a mounted secret)"
    )
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_oauth_scope: str = Field(
        default="",
        description="OAUTHBEARER token scope; empty: https://<namespace>.servicebus.windows.net"
        "/.default, from an Event Hubs bootstrap address",
    )
    # Static membership (KIP-345): a restarted replica takes its partitions back at once.
    kafka_instance_id: str = Field(
        default="",
        description="group.instance.id base; empty: the host name; 'off': dynamic membership",
    )
    kafka_version: str = "4.1.1"
    kafka_data_dir: Path = Field(default_factory=lambda: default_state_dir() / "kafka")
    cache_dir: Path = Field(default_factory=default_cache_dir)

    # --- Webhook endpoint ---
    webhook_public_url: str = Field(default="", description="Public base URL of the webhook")
    webhook_max_body_bytes: int = 1_000_000

    # --- Reconcile job (producers/reconcile/) ---
    reconcile_schedule: str = Field(
        default="nightly",
        description="nightly (02:00) | hourly | off | every N[s|m|h|d] | @daily-style alias | "
                    "5-field cron with names; UTC unless a time zone follows "
                    "(nightly Europe/Berlin)",
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
            # Read when the settings are made, not at import: CONTACTSYNC_CONFIG may change.
            TomlConfigSettingsSource(settings_cls, toml_file=config_file()),
            file_secret_settings,
        )

    def missing_tenant(self) -> list[str]:
        """The variables still to set before Graph and BC can be reached."""
        return [name for name, value in (
            ("CONTACTSYNC_GRAPH_BASE_URL", self.graph_base_url),
            ("CONTACTSYNC_BC_BASE_URL", self.bc_base_url),
            ("CONTACTSYNC_BC_COMPANY", self.bc_company),
        ) if not value]

    @model_validator(mode="after")
    def _kafka_security_is_complete(self) -> Self:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and self.kafka_sasl_mechanism is None:
            raise ValueError(
                f"CONTACTSYNC_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "CONTACTSYNC_KAFKA_SASL_MECHANISM (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or "
                "OAUTHBEARER)"
            )
        if sasl and self.kafka_sasl_mechanism != "OAUTHBEARER" and not (
            self.kafka_sasl_username
            and (self.kafka_sasl_password or self.kafka_sasl_password_file)
        ):
            raise ValueError(
                f"SASL {self.kafka_sasl_mechanism} needs CONTACTSYNC_KAFKA_SASL_USERNAME and "
                "CONTACTSYNC_KAFKA_SASL_PASSWORD (or CONTACTSYNC_KAFKA_SASL_PASSWORD_FILE)"
            )
        return self

    def kafka_instance_base(self) -> str | None:
        """The replica's name in static consumer groups (None: dynamic membership)."""
        if self.kafka_instance_id.lower() == "off":
            return None
        return self.kafka_instance_id or socket.gethostname()

    @property
    def uses_emulators(self) -> bool:
        """True when no tenant is configured: the sandbox then starts the emulators."""
        return not (self.graph_base_url or self.bc_base_url)


class SettingsError(ValueError):
    """Settings that cannot be read; the message names the variable or file to fix."""


def config_file() -> Path:
    return Path(os.environ.get("CONTACTSYNC_CONFIG") or "contactsync.toml")


def _setting_name(field: str) -> str:
    if field == "kafka_bootstrap_servers":
        return "KAFKA_BOOTSTRAP_SERVERS"
    return f"CONTACTSYNC_{field.upper()}"


def load_settings(**overrides: Any) -> Settings:
    """The settings, or a SettingsError in one sentence: a config file named by
    CONTACTSYNC_CONFIG that does not exist (an admin's typo, never ignored), a file that is not
    TOML, or a value of the wrong type (named as the variable to set)."""
    named = os.environ.get("CONTACTSYNC_CONFIG")
    if named and not Path(named).is_file():
        raise SettingsError(f"the config file {named} named by CONTACTSYNC_CONFIG does not "
                            "exist: fix the path or unset CONTACTSYNC_CONFIG")
    try:
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"the config file {config_file()} is not valid TOML ({exc}): "
                            "fix that line") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise SettingsError(f"{_setting_name(field)} (environment or {config_file()}): "
                            f"{first['msg']}, got {first.get('input')!r}") from None
