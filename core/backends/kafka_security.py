"""The ``log.kafka.security`` block: how millpond authenticates to a real cluster.

::

    log:
      kafka:
        bootstrap_servers: broker1:9093
        security:
          protocol: SASL_SSL                # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
          ssl:
            ca_file: /etc/kafka/ca.pem
            cert_file: /etc/kafka/client.pem    # mutual TLS only
            key_file: /etc/kafka/client.key
            key_password: ${KAFKA_KEY_PASSWORD}
            check_hostname: true
          sasl:
            mechanism: SCRAM-SHA-512        # PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512
            username: millpond
            password: ${KAFKA_PASSWORD}

The names are Kafka's (``security.protocol``, ``sasl.mechanism``). The model
refuses a protocol without the block it needs, a block the protocol would
ignore, and SASL without credentials; :func:`core.config.parse_pipeline`
refuses a password written in the file. :meth:`KafkaSecurity.client_kwargs`
turns it into aiokafka's ``security_protocol``/``ssl_context``/``sasl_*``
arguments, which every client (admin, producer, consumer) takes alike.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from ..errors import ConfigError
from ..tls import FROM_ENV_ONLY, TlsSettings, client_context

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]

#: aiokafka settings that the ``security:`` block owns; refused in ``log.kafka.config``
SECURITY_KEYS = frozenset({
    "security_protocol", "ssl_context", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
})


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SaslSettings(_Model):
    mechanism: Mechanism
    username: str = Field(min_length=1)
    password: SecretStr = Field(json_schema_extra=FROM_ENV_ONLY)

    @model_validator(mode="after")
    def _has_password(self) -> SaslSettings:
        if not self.password.get_secret_value():
            raise ValueError("password is empty (is its environment variable set to ''?)")
        return self


class KafkaSecurity(_Model):
    protocol: Protocol = "PLAINTEXT"
    ssl: TlsSettings | None = None
    sasl: SaslSettings | None = None

    @model_validator(mode="after")
    def _blocks_match_protocol(self) -> KafkaSecurity:
        uses_ssl = self.protocol in ("SSL", "SASL_SSL")
        uses_sasl = self.protocol.startswith("SASL_")
        if uses_ssl and self.ssl is None:
            raise ValueError(f"protocol {self.protocol} needs an 'ssl:' block (at least ca_file, or "
                             "'ssl: {}' to trust the system's CAs)")
        if not uses_ssl and self.ssl is not None:
            raise ValueError(f"protocol {self.protocol} does not use TLS: drop 'ssl:' or use "
                             f"{'SASL_SSL' if uses_sasl else 'SSL'}")
        if uses_sasl and self.sasl is None:
            raise ValueError(f"protocol {self.protocol} needs a 'sasl:' block with mechanism, username "
                             "and password")
        if not uses_sasl and self.sasl is not None:
            raise ValueError(f"protocol {self.protocol} does not authenticate with SASL: drop 'sasl:' or use "
                             f"{'SASL_SSL' if uses_ssl else 'SASL_PLAINTEXT'}")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        """aiokafka's security arguments (one SSLContext, shared by every client of a backend)."""
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.ssl is not None:
            try:
                kwargs["ssl_context"] = client_context(self.ssl)
            except ValueError as exc:  # a file changed since the config was validated
                raise ConfigError(f"log.kafka.security.ssl: {exc}") from None
        if self.sasl is not None:
            kwargs["sasl_mechanism"] = self.sasl.mechanism
            kwargs["sasl_plain_username"] = self.sasl.username
            kwargs["sasl_plain_password"] = self.sasl.password.get_secret_value()
        return kwargs


async def connection_problem(bootstrap_servers: str, kwargs: dict[str, Any], timeout_ms: int = 10_000) -> str | None:
    """Why a secured connection to the first bootstrap server fails, in one line; None if it works.

    aiokafka only says "Unable to bootstrap" and logs the cause; this repeats the first
    connection (TLS handshake, SASL exchange) to name it: an untrusted certificate, a host
    name the certificate does not carry, refused credentials. Never contains a password.
    """
    from aiokafka.conn import create_conn
    from aiokafka.errors import (
        AuthenticationFailedError,
        KafkaConnectionError,
        KafkaError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    )

    first = bootstrap_servers.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    security = {k: v for k, v in kwargs.items() if k in SECURITY_KEYS}
    try:
        conn = await create_conn(host.strip("[]"), int(port), request_timeout_ms=timeout_ms, **security)
    except ssl.SSLCertVerificationError as exc:
        return f"TLS: the certificate of {first} is not accepted: {exc.verify_message} (check ssl.ca_file" + (
            ", ssl.check_hostname)" if "mismatch" in str(exc.verify_message) else ")")
    except (SaslAuthenticationFailed, AuthenticationFailedError) as exc:
        return (f"SASL {kwargs.get('sasl_mechanism')} authentication of user {kwargs.get('sasl_plain_username')!r} "
                f"at {first} failed (wrong username or password?): {_text(exc)}")
    except UnsupportedSaslMechanismError as exc:
        return f"{first} does not accept SASL mechanism {kwargs.get('sasl_mechanism')}: {_text(exc)}"
    except ssl.SSLError as exc:
        return f"TLS handshake with {first} failed: {exc.reason or exc}"
    except KafkaConnectionError as exc:
        if kwargs.get("security_protocol") == "SSL" and "closed" in str(exc):
            return (f"{first} closed the connection during the TLS handshake (does the listener require a "
                    "client certificate, or speak another protocol?)")
        return f"{first}: {exc}"
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        return f"{first}: {type(exc).__name__}: {exc}"
    conn.close()
    return None


def _text(exc: BaseException) -> str:
    """aiokafka's message without the error-class prefix it repeats."""
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("[Error") and ": " in text else text
