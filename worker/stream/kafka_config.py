"""Connection settings shared by the consumer, the producers and the admin tools (security included)."""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kafka import TopicPartition
from kafka.net.sasl.oauth import AbstractTokenProvider
from kafka.structs import OffsetAndMetadata

from worker.core.settings import KafkaSettings


class TokenFile(AbstractTokenProvider):
    """OAUTHBEARER token read from a file at each (re)connection: whatever keeps the file fresh (an identity
    agent, a projected service-account token) rotates it without a restart."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def token(self) -> str:
        return Path(self.path).read_text().strip()


def token_subject(path: str) -> str | None:
    """The `sub` claim of a JWT in `path`, unverified: only to name the principal in an error message."""
    try:
        payload = Path(path).read_text().strip().split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"])
    except (OSError, IndexError, KeyError, ValueError, TypeError):
        return None


def connection_config(settings: KafkaSettings) -> dict[str, Any]:
    """kafka-python keyword arguments for bootstrap servers, SASL and TLS."""
    config: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers.split(","),
        "client_id": settings.client_id,
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism == "OAUTHBEARER":
        config["sasl_mechanism"] = "OAUTHBEARER"
        config["sasl_oauth_token_provider"] = TokenFile(settings.sasl_oauth_token_file)
    elif settings.sasl_mechanism == "AWS_MSK_IAM":
        config["sasl_mechanism"] = "AWS_MSK_IAM"
    elif settings.sasl_mechanism:
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        config["sasl_plain_password"] = (
            settings.sasl_password.get_secret_value() if settings.sasl_password else None
        )
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, key)
        if value:
            config[key] = value
    return config


def commit_positions(offsets: Mapping[TopicPartition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    """Offsets as kafka-python commits them (no metadata, no leader epoch): plain and transactional commits."""
    return {tp: OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}


def transactional_id(settings: KafkaSettings) -> str:
    """The producer's `transactional.id` in exactly-once mode (`KafkaSettings.transactional_id`)."""
    if settings.transactional_id:
        return settings.transactional_id
    if settings.group_instance_id:
        return f"{settings.group_id}-{settings.group_instance_id}"
    return f"{settings.group_id}-{socket.gethostname()}-{os.getpid()}"


class KafkaUnavailable(Exception):
    """No broker answered within the bound, or a topic is missing; the message names the setting to check."""


def bootstrap_failed(settings: KafkaSettings, timeout_s: float, exc: BaseException) -> KafkaUnavailable:
    return KafkaUnavailable(
        f"Kafka at {settings.bootstrap_servers} did not answer within {timeout_s:g} s "
        f"({type(exc).__name__}; check DFMOD_KAFKA__BOOTSTRAP_SERVERS)"
    )
