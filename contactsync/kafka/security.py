"""How every Kafka client authenticates: the security part of `client_config` (io.py).

PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL with PLAIN, SCRAM-SHA-256/512 or OAUTHBEARER, as
operators of Kafka Connect or Debezium configure it. OAUTHBEARER takes an Entra ID token from
azure-identity, so Azure Event Hubs' Kafka endpoint works with the credential Graph and BC use.
The password (or its file's content) is registered with the log redaction, so no log line of
ours or of kafka-python's carries it.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from typing import Any

from kafka.net.sasl.oauth import AbstractTokenProvider

from contactsync.kafka.errors import BrokerError
from contactsync.logs import register_secret
from contactsync.settings import Settings

EVENT_HUBS_SUFFIX = ".servicebus.windows.net"
_REFRESH_MARGIN_S = 300  # a token is renewed this long before it expires


def security_config(settings: Settings) -> dict[str, Any]:
    """kafka-python keyword arguments for the configured protocol and mechanism."""
    config: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    for key, path in (("ssl_cafile", settings.kafka_ssl_cafile),
                      ("ssl_certfile", settings.kafka_ssl_certfile),
                      ("ssl_keyfile", settings.kafka_ssl_keyfile)):
        if path is not None:
            config[key] = str(path)
    if not settings.kafka_security_protocol.startswith("SASL_"):
        return config
    mechanism = settings.kafka_sasl_mechanism
    config["sasl_mechanism"] = mechanism
    if mechanism == "OAUTHBEARER":
        config["sasl_oauth_token_provider"] = AzureTokenProvider(
            kafka_credential(settings), oauth_scope(settings)
        )
    else:
        config["sasl_plain_username"] = settings.kafka_sasl_username
        config["sasl_plain_password"] = sasl_password(settings)
    return config


def sasl_password(settings: Settings) -> str:
    """The SASL password: CONTACTSYNC_KAFKA_SASL_PASSWORD, else the file it is mounted in."""
    if settings.kafka_sasl_password is not None:
        password = settings.kafka_sasl_password.get_secret_value()
    elif settings.kafka_sasl_password_file is not None:
        path = settings.kafka_sasl_password_file
        try:
            password = path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise BrokerError(
                f"cannot read the Kafka SASL password file {path} ({exc.strerror}): "
                "fix CONTACTSYNC_KAFKA_SASL_PASSWORD_FILE"
            ) from None
    else:  # the settings' validator asks for one of them first
        raise BrokerError("set CONTACTSYNC_KAFKA_SASL_PASSWORD or _PASSWORD_FILE")
    register_secret(password)
    return password


def oauth_scope(settings: Settings) -> str:
    """The token scope: the setting, else Event Hubs' `https://<namespace>.../.default` (Learn,
    "Authorize access to Event Hubs resources using Microsoft Entra ID": "For Kafka clients,
    the resource to request a token for is https://<namespace>.servicebus.windows.net")."""
    if settings.kafka_oauth_scope:
        return settings.kafka_oauth_scope
    host = settings.kafka_bootstrap_servers.split(",")[0].strip().rsplit(":", 1)[0]
    if host.endswith(EVENT_HUBS_SUFFIX):
        return f"https://{host}/.default"
    raise BrokerError(
        "OAUTHBEARER needs a token scope: set CONTACTSYNC_KAFKA_OAUTH_SCOPE "
        "(for Event Hubs: https://<namespace>.servicebus.windows.net/.default)"
    )


def connect_failure(settings: Settings, bootstrap: str) -> str:
    """Why no client could connect, in one sentence naming what to fix: kafka-python only
    retries until its bootstrap timeout, and a refused login looks like a dropped connection."""
    server = bootstrap.split(",")[0].strip()
    host, _, port = server.rpartition(":")
    protocol = settings.kafka_security_protocol
    try:
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
    except (OSError, ValueError) as exc:
        return (f"no Kafka broker answers at {server} ({exc}): start it or fix "
                "KAFKA_BOOTSTRAP_SERVERS")
    with sock:
        if protocol in ("SSL", "SASL_SSL"):
            try:
                context = ssl.create_default_context(
                    cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
                )
                if settings.kafka_ssl_certfile:
                    context.load_cert_chain(str(settings.kafka_ssl_certfile),
                                            str(settings.kafka_ssl_keyfile or "") or None)
                sock.settimeout(5)
                context.wrap_socket(sock, server_hostname=host.strip("[]")).close()
            except (ssl.SSLError, OSError) as exc:
                return (f"the TLS handshake with Kafka at {server} failed ({exc}): check "
                        "CONTACTSYNC_KAFKA_SSL_CAFILE (and _SSL_CERTFILE, _SSL_KEYFILE) and that "
                        f"the listener speaks {protocol}")
    if protocol.startswith("SASL_"):
        mechanism = settings.kafka_sasl_mechanism
        if mechanism == "OAUTHBEARER":
            return (f"Kafka at {server} refused the OAUTHBEARER login with the azure-identity "
                    f"token for {settings.kafka_oauth_scope or 'the Event Hubs scope'}: check "
                    "the AZURE_* credential's role on the namespace and "
                    "CONTACTSYNC_KAFKA_OAUTH_SCOPE")
        return (f"Kafka at {server} refused the SASL {mechanism} login of user "
                f"{settings.kafka_sasl_username!r}: check CONTACTSYNC_KAFKA_SASL_USERNAME and "
                "CONTACTSYNC_KAFKA_SASL_PASSWORD (or _PASSWORD_FILE)")
    return (f"Kafka at {server} accepts connections but does not answer as a {protocol} "
            "listener: check KAFKA_BOOTSTRAP_SERVERS and CONTACTSYNC_KAFKA_SECURITY_PROTOCOL")


def kafka_credential(settings: Settings) -> Any:
    """The azure-identity credential for Kafka tokens: the one CONTACTSYNC_AZURE_CREDENTIAL
    names for Graph and BC (contactsync.credentials), so Event Hubs sees the same identity."""
    from contactsync.credentials import build_sync_credential

    return build_sync_credential(settings)


class AzureTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    """kafka-python's OAUTHBEARER token source: one Entra ID token for `scope`, reused across
    connections and renewed shortly before it expires."""

    def __init__(self, credential: Any, scope: str) -> None:
        super().__init__()
        self._credential = credential
        self._scope = scope
        self._lock = threading.Lock()
        self._token = ""
        self._expires_on = 0.0

    def token(self) -> str:
        with self._lock:
            if time.time() > self._expires_on - _REFRESH_MARGIN_S:
                access = self._credential.get_token(self._scope)
                register_secret(access.token)
                self._token, self._expires_on = access.token, float(access.expires_on)
            return self._token
