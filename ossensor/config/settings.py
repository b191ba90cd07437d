"""The settings model: every environment variable `ossensor run` reads, checked, typed and defaulted.

``load()`` reads the variables of docs/SPEC (``VSENSOR_HOSTNAME``, ``VSENSOR_HMAC_KEY`` ...), checks every
one of them and raises a single ConfigError (problems.py) listing *all* the problems, one line each.
Validation runs through a pydantic-settings ``BaseSettings`` model (:class:`Settings`) whose fields are
aliased to the environment variable names; ``load()`` feeds it from a mapping (``os.environ`` by default,
a plain dict in tests). The parsers and their wording are in values.py, the key in key.py.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from pydantic import Field, SecretBytes, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ossensor.config.key import REDACTED, read_hmac_key, redact
from ossensor.config.local import LIST_NAMES, read_lists
from ossensor.config.problems import problem_from_error, raise_problems
from ossensor.config.values import (batch_age_ms, batch_bytes, check_bpf, debug_level, log_format, snaplen, env_value, parse_bool, parse_float, parse_hostname, parse_ifname,
                                    parse_int, parse_regex_list, readable_file, show, text_problem, tls_problems,
                                    writable_dir, writable_file_path)
from ossensor.interfaces.egrep import ERE
from ossensor.ship import proxy

DEFAULT_CONFIG_PATH = Path("/etc/darktrace/ossensor.cfg")

# Order in which problems are reported (the order of the documentation table).
VARIABLES = [
    "VSENSOR_HOSTNAME", "VSENSOR_HMAC_KEY", "VSENSOR_HMAC_KEY_FILE", "VSENSOR_PORT",
    "OSSENSOR_NETWORK_DEVICE", "OSSENSOR_CONFIG_PATH", "OSSENSOR_DEBUG",
    "ANTIGENA_ENABLED", "ANTIGENA_TIME_PERIOD",
    "NETWORK_DEVICE_EXCLUDELIST", "NETWORK_DEVICE_BLACKLIST",
    "NETWORK_DEVICE_INCLUDELIST", "NETWORK_DEVICE_WHITELIST",
    "NETWORK_DEVICE_ANY", "BPF", "OSSENSOR_LOGFILE_PATH",
    "INTERFACE_WAIT_SECS", "INTERFACE_WAIT_ATTEMPTS",
    "OSSENSOR_TLS_CA_FILE", "OSSENSOR_TLS_CERT_FILE", "OSSENSOR_TLS_KEY_FILE",
    "OSSENSOR_SNAPLEN", "OSSENSOR_RING_MB", "OSSENSOR_BLOCK_TIMEOUT_MS", "OSSENSOR_CAPTURE_THREADS",
    "OSSENSOR_BATCH_MAX_KB", "OSSENSOR_BATCH_MAX_AGE_MS", "OSSENSOR_QUEUE_MB", "OSSENSOR_INFLIGHT_MB",
    # the vSensor link under faults (issue 5): spool, compression, shutdown
    "OSSENSOR_SPOOL_DIR", "OSSENSOR_SPOOL_MB", "OSSENSOR_COMPRESSION", "OSSENSOR_SHUTDOWN_TIMEOUT",
    "OSSENSOR_STATS_INTERVAL", "OSSENSOR_SENSOR_NAME",
    # observability (issue 8): log format, metrics/probes HTTP endpoint, readiness bound
    "OSSENSOR_LOG_FORMAT", "OSSENSOR_METRICS_PORT", "OSSENSOR_METRICS_ADDR", "OSSENSOR_READY_ACK_SECS",
    # a node's topology (issue 19): copies of one packet on several interfaces
    "OSSENSOR_DEDUP", "OSSENSOR_DEDUP_WINDOW_MS",
]


_SENSOR_NAME_RE = re.compile(r"[A-Za-z0-9._:-]{1,253}")


class Settings(BaseSettings):
    """Validated configuration. Field aliases are the environment variable names."""

    model_config = SettingsConfigDict(case_sensitive=True, extra="ignore", arbitrary_types_allowed=True,
                                      populate_by_name=True, validate_default=False)

    vsensor_hostname: str = Field(validation_alias="VSENSOR_HOSTNAME")
    vsensor_port: int = Field(443, validation_alias="VSENSOR_PORT")
    hmac_key: SecretBytes = Field(validation_alias="VSENSOR_HMAC_KEY", repr=False)
    network_device: Optional[str] = Field(None, validation_alias="OSSENSOR_NETWORK_DEVICE")
    config_path: Path = Field(DEFAULT_CONFIG_PATH, validation_alias="OSSENSOR_CONFIG_PATH")
    debug: int = Field(1, validation_alias="OSSENSOR_DEBUG")
    antigena_enabled: bool = Field(True, validation_alias="ANTIGENA_ENABLED")
    antigena_time_period: float = Field(5.0, validation_alias="ANTIGENA_TIME_PERIOD")
    exclude_list: list[ERE] = Field(default_factory=list, validation_alias="NETWORK_DEVICE_EXCLUDELIST")
    include_list: list[ERE] = Field(default_factory=list, validation_alias="NETWORK_DEVICE_INCLUDELIST")
    device_any: bool = Field(False, validation_alias="NETWORK_DEVICE_ANY")
    snaplen: int = Field(262144, validation_alias="OSSENSOR_SNAPLEN")  # before bpf: bpf uses it
    bpf: str = Field("", validation_alias="BPF")
    logfile: Optional[Path] = Field(None, validation_alias="OSSENSOR_LOGFILE_PATH")
    interface_wait_secs: float = Field(5.0, validation_alias="INTERFACE_WAIT_SECS")
    interface_wait_attempts: int = Field(3, validation_alias="INTERFACE_WAIT_ATTEMPTS")
    tls_ca_file: Optional[Path] = Field(None, validation_alias="OSSENSOR_TLS_CA_FILE")
    tls_cert_file: Optional[Path] = Field(None, validation_alias="OSSENSOR_TLS_CERT_FILE")
    tls_key_file: Optional[Path] = Field(None, validation_alias="OSSENSOR_TLS_KEY_FILE")
    ring_mb: int = Field(64, validation_alias="OSSENSOR_RING_MB")
    capture_threads: int = Field(1, validation_alias="OSSENSOR_CAPTURE_THREADS")  # PACKET_FANOUT readers
    dedup: bool = Field(True, validation_alias="OSSENSOR_DEDUP")  # copies on other interfaces: counted, not sent
    dedup_window_ms: int = Field(20, validation_alias="OSSENSOR_DEDUP_WINDOW_MS")
    block_timeout_ms: int = Field(10, validation_alias="OSSENSOR_BLOCK_TIMEOUT_MS")
    batch_max_bytes: int = Field(4096 * 1024, validation_alias="OSSENSOR_BATCH_MAX_KB")
    batch_max_age_ms: int = Field(1000, validation_alias="OSSENSOR_BATCH_MAX_AGE_MS")
    queue_mb: int = Field(64, validation_alias="OSSENSOR_QUEUE_MB")
    # batches sent and not yet answered: 64 MiB keeps over 1 Gb/s flowing to a vSensor 100 ms away (docs)
    inflight_mb: int = Field(64, validation_alias="OSSENSOR_INFLIGHT_MB")
    spool_dir: Optional[Path] = Field(None, validation_alias="OSSENSOR_SPOOL_DIR")
    spool_mb: int = Field(1024, validation_alias="OSSENSOR_SPOOL_MB")
    compression: str = Field("auto", validation_alias="OSSENSOR_COMPRESSION")
    shutdown_timeout: float = Field(5.0, validation_alias="OSSENSOR_SHUTDOWN_TIMEOUT")
    stats_interval: float = Field(10.0, validation_alias="OSSENSOR_STATS_INTERVAL")
    sensor_name: str = Field(default_factory=socket.gethostname, validation_alias="OSSENSOR_SENSOR_NAME")
    log_format: str = Field("plain", validation_alias="OSSENSOR_LOG_FORMAT")
    metrics_port: Optional[int] = Field(None, validation_alias="OSSENSOR_METRICS_PORT")
    metrics_addr: str = Field("0.0.0.0", validation_alias="OSSENSOR_METRICS_ADDR")
    ready_ack_secs: float = Field(60.0, validation_alias="OSSENSOR_READY_ACK_SECS")
    warnings: list[str] = Field(default_factory=list, validation_alias="_WARNINGS")

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings: PydanticBaseSettingsSource,
                                   env_settings, dotenv_settings, file_secret_settings):
        # Only what load() passes in: the environment is read (and cross-checked) there, never behind
        # its back, so a test's dict is the whole truth.
        return (init_settings,)

    # -- per-variable validators (raw strings in, typed values out; ValueError(reason) on a problem)

    @field_validator("vsensor_hostname", mode="before")
    @classmethod
    def _v_hostname(cls, v):
        return parse_hostname(v)

    @field_validator("vsensor_port", mode="before")
    @classmethod
    def _v_port(cls, v):
        return parse_int(v, 1, 65535)

    @field_validator("hmac_key", mode="before")
    @classmethod
    def _v_key(cls, v):
        if isinstance(v, SecretBytes):
            return v
        if isinstance(v, str):
            v = v.encode("utf-8", "surrogateescape")
        if not isinstance(v, (bytes, bytearray)) or not bytes(v).strip():
            raise ValueError("required, not set")  # never echo the value
        return SecretBytes(bytes(v))

    @field_validator("network_device", mode="before")
    @classmethod
    def _v_device(cls, v):
        return None if v is None else parse_ifname(v)

    @field_validator("config_path", mode="before")
    @classmethod
    def _v_config_path(cls, v):
        return writable_file_path(v, regular=True)

    @field_validator("debug", mode="before")
    @classmethod
    def _v_debug(cls, v):
        return debug_level(v)

    @field_validator("antigena_enabled", "device_any", mode="before")
    @classmethod
    def _v_bool(cls, v):
        return parse_bool(v)

    @field_validator("antigena_time_period", "stats_interval", mode="before")
    @classmethod
    def _v_period(cls, v):
        return parse_float(v, minimum=0.0, strict_min=True, maximum=86400.0)

    @field_validator("interface_wait_secs", mode="before")
    @classmethod
    def _v_wait_secs(cls, v):
        return parse_float(v, minimum=0.0, strict_min=False, maximum=86400.0)

    @field_validator("interface_wait_attempts", mode="before")
    @classmethod
    def _v_wait_attempts(cls, v):
        return parse_int(v, 1, 1_000_000)

    @field_validator("exclude_list", "include_list", mode="before")
    @classmethod
    def _v_lists(cls, v):
        return parse_regex_list(v)

    @field_validator("snaplen", mode="before")
    @classmethod
    def _v_snaplen(cls, v):
        return snaplen(v)

    @field_validator("bpf", mode="before")
    @classmethod
    def _v_bpf(cls, v, info: ValidationInfo):
        expr = str(v)
        if not expr.strip():
            return ""
        snaplen = info.data.get("snaplen", 262144)
        check_bpf(expr, snaplen)
        return expr

    @field_validator("logfile", mode="before")
    @classmethod
    def _v_logfile(cls, v):
        return None if v is None else writable_file_path(v)

    @field_validator("tls_ca_file", "tls_cert_file", "tls_key_file", mode="before")
    @classmethod
    def _v_tls_files(cls, v):
        return None if v is None else readable_file(v)

    @field_validator("ring_mb", mode="before")
    @classmethod
    def _v_ring(cls, v):
        return parse_int(v, 1, 4096)

    @field_validator("capture_threads", mode="before")
    @classmethod
    def _v_capture_threads(cls, v):
        return parse_int(v, 1, 16)

    @field_validator("dedup", mode="before")
    @classmethod
    def _v_dedup(cls, v):
        text = v if isinstance(v, bool) else str(v).strip().lower()
        if text in (True, "on"):
            return True
        if text in (False, "off"):
            return False
        raise ValueError(f"must be on or off, got {show(v)}")

    @field_validator("dedup_window_ms", mode="before")
    @classmethod
    def _v_dedup_window(cls, v):
        return parse_int(v, 1, 1000)

    @field_validator("block_timeout_ms", mode="before")
    @classmethod
    def _v_block_timeout(cls, v):
        return parse_int(v, 1, 1000)

    @field_validator("batch_max_bytes", mode="before")
    @classmethod
    def _v_batch_kb(cls, v):
        if isinstance(v, int) and not isinstance(v, bool) and v >= 64 * 1024:
            return v  # already bytes (populate by name)
        return batch_bytes(v)

    @field_validator("batch_max_age_ms", mode="before")
    @classmethod
    def _v_batch_age(cls, v):
        return batch_age_ms(v)

    @field_validator("spool_dir", mode="before")
    @classmethod
    def _v_spool_dir(cls, v):
        return None if v is None else writable_dir(v)

    @field_validator("spool_mb", mode="before")
    @classmethod
    def _v_spool_mb(cls, v):
        return parse_int(v, 1, 1 << 20)

    @field_validator("compression", mode="before")
    @classmethod
    def _v_compression(cls, v):
        text = str(v).strip().lower()
        if text in ("none", "identity", "off", "0", "false", "no"):
            return "none"
        if text in ("zstd", "auto"):
            return text
        raise ValueError(f"must be auto, zstd or none, got {show(v)}")

    @field_validator("shutdown_timeout", mode="before")
    @classmethod
    def _v_shutdown_timeout(cls, v):
        return parse_float(v, minimum=0.0, strict_min=False, maximum=3600.0)

    @field_validator("queue_mb", mode="before")
    @classmethod
    def _v_queue(cls, v):
        return parse_int(v, 1, 65536)

    @field_validator("inflight_mb", mode="before")
    @classmethod
    def _v_inflight(cls, v):
        return parse_int(v, 1, 1024)

    @field_validator("log_format", mode="before")
    @classmethod
    def _v_log_format(cls, v):
        return log_format(v)

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _v_metrics_port(cls, v):
        return None if v is None else parse_int(v, 1, 65535)

    @field_validator("metrics_addr", mode="before")
    @classmethod
    def _v_metrics_addr(cls, v):
        text = str(v).strip().strip("[]")
        try:
            ipaddress.ip_address(text)
        except ValueError:
            raise ValueError(f"must be an IP address to listen on (0.0.0.0, ::, 127.0.0.1), "
                             f"got {show(v)}") from None
        return text

    @field_validator("ready_ack_secs", mode="before")
    @classmethod
    def _v_ready_ack(cls, v):
        return parse_float(v, minimum=1.0, strict_min=False, maximum=86400.0)

    @field_validator("sensor_name", mode="before")
    @classmethod
    def _v_sensor_name(cls, v):
        text = str(v).strip()
        if not _SENSOR_NAME_RE.fullmatch(text):
            raise ValueError("must be 1-253 characters from letters, digits and . _ : -, "
                             f"got {show(text)}")
        return text

    # -- helpers

    @property
    def key_bytes(self) -> bytes:
        """The HMAC key. Never log it."""
        return self.hmac_key.get_secret_value()

    @property
    def vsensor_address(self) -> str:
        """``host:port``, IPv6 in brackets (``[fd00::5]:443``)."""
        host = self.vsensor_hostname
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{self.vsensor_port}"

    def summary(self) -> list[tuple[str, str]]:
        """(variable, value) rows for the start-up log; the key is shown as ``<redacted>``."""
        def lst(items: list[ERE]) -> str:
            return " ".join(e.pattern for e in items) if items else "(none)"

        def opt(value: Any, unset: str = "(not set)") -> str:
            return unset if value is None else str(value)

        rows = [
            ("VSENSOR_HOSTNAME", self.vsensor_hostname),
            ("VSENSOR_PORT", str(self.vsensor_port)),
            ("VSENSOR_HMAC_KEY", REDACTED),
            ("OSSENSOR_NETWORK_DEVICE", opt(self.network_device, "(not set)")),
            ("OSSENSOR_CONFIG_PATH", str(self.config_path)),
            ("OSSENSOR_DEBUG", str(self.debug)),
            ("ANTIGENA_ENABLED", "true" if self.antigena_enabled else "false"),
            ("ANTIGENA_TIME_PERIOD", f"{self.antigena_time_period:g}"),
            ("NETWORK_DEVICE_EXCLUDELIST", lst(self.exclude_list)),
            ("NETWORK_DEVICE_INCLUDELIST", lst(self.include_list)),
            ("NETWORK_DEVICE_ANY", "1" if self.device_any else "0"),
            ("BPF", self.bpf or "(none)"),
            ("OSSENSOR_LOGFILE_PATH", opt(self.logfile, "(standard output)")),
            ("INTERFACE_WAIT_SECS", f"{self.interface_wait_secs:g}"),
            ("INTERFACE_WAIT_ATTEMPTS", str(self.interface_wait_attempts)),
            ("OSSENSOR_TLS_CA_FILE", opt(self.tls_ca_file, "(system default)")),
            ("OSSENSOR_TLS_CERT_FILE", opt(self.tls_cert_file)),
            ("OSSENSOR_TLS_KEY_FILE", opt(self.tls_key_file)),
            ("OSSENSOR_SNAPLEN", str(self.snaplen)),
            ("OSSENSOR_RING_MB", str(self.ring_mb)),
            ("OSSENSOR_CAPTURE_THREADS", str(self.capture_threads)),
            ("OSSENSOR_DEDUP", "on" if self.dedup else "off"),
            ("OSSENSOR_DEDUP_WINDOW_MS", str(self.dedup_window_ms)),
            ("OSSENSOR_BLOCK_TIMEOUT_MS", str(self.block_timeout_ms)),
            ("OSSENSOR_BATCH_MAX_KB", str(self.batch_max_bytes // 1024)),
            ("OSSENSOR_BATCH_MAX_AGE_MS", str(self.batch_max_age_ms)),
            ("OSSENSOR_QUEUE_MB", str(self.queue_mb)),
            ("OSSENSOR_INFLIGHT_MB", str(self.inflight_mb)),
            ("OSSENSOR_SPOOL_DIR", opt(self.spool_dir, "(no spool)")),
            ("OSSENSOR_SPOOL_MB", str(self.spool_mb)),
            ("OSSENSOR_COMPRESSION", self.compression),
            ("OSSENSOR_SHUTDOWN_TIMEOUT", f"{self.shutdown_timeout:g}"),
            ("OSSENSOR_STATS_INTERVAL", f"{self.stats_interval:g}"),
            ("OSSENSOR_SENSOR_NAME", self.sensor_name),
            ("OSSENSOR_LOG_FORMAT", self.log_format),
            ("OSSENSOR_METRICS_PORT", opt(self.metrics_port, "(off)")),
            ("OSSENSOR_METRICS_ADDR", self.metrics_addr),
            ("OSSENSOR_READY_ACK_SECS", f"{self.ready_ack_secs:g}"),
        ]
        return [(name, redact(value, self.key_bytes)) for name, value in rows]

    def __str__(self) -> str:
        return "Settings(" + ", ".join(f"{n}={v}" for n, v in self.summary()) + ")"


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and check the configuration; raises :class:`ConfigError` listing every problem."""
    if environ is None:
        environ = os.environ
    problems: list[tuple[str, str]] = []  # (variable, line)
    # values no parser can take (NUL, bytes that are not UTF-8): one line each, then as if unset, and no
    # second line for the same variable ("required, not set")
    unusable: dict[str, str] = {}
    for name in (*VARIABLES, *proxy.PROXY_VARIABLES):
        value = environ.get(name)
        why = None if value is None or name == "VSENSOR_HMAC_KEY" else text_problem(str(value))
        if why:
            unusable[name] = f"{name}: {why}"
    if unusable:
        environ = {k: v for k, v in environ.items() if k not in unusable}
    problems.extend(unusable.items())
    problems.extend((line.split(":", 1)[0], line) for line in proxy.problems(environ))
    warnings: list[str] = []
    data: dict[str, Any] = {}
    names: dict[str, str] = {}  # field alias -> variable the user actually set

    # the key (two possible sources)
    key, key_problems = read_hmac_key(environ)
    for line in key_problems:
        problems.append((line.split(":", 1)[0], line))
    if key is not None:
        data["VSENSOR_HMAC_KEY"] = key
    elif not key_problems:
        problems.append(("VSENSOR_HMAC_KEY", "VSENSOR_HMAC_KEY: required, not set "
                                             "(set it, or VSENSOR_HMAC_KEY_FILE to a file holding it)"))

    # the interface lists, under their new or old names
    lists, names, list_warnings, list_problems = read_lists(environ)
    data.update(lists)
    warnings.extend(list_warnings)
    problems.extend(list_problems)

    # TLS client certificate and key come together
    cert, tls_key = env_value(environ, "OSSENSOR_TLS_CERT_FILE"), env_value(environ, "OSSENSOR_TLS_KEY_FILE")
    if (cert is None) != (tls_key is None):
        have, missing = (("OSSENSOR_TLS_CERT_FILE", "OSSENSOR_TLS_KEY_FILE") if cert is not None
                         else ("OSSENSOR_TLS_KEY_FILE", "OSSENSOR_TLS_CERT_FILE"))
        problems.append((missing, f"{missing}: must be set together with {have} "
                                  "(client certificate and its private key)"))

    skip = {"VSENSOR_HMAC_KEY", "VSENSOR_HMAC_KEY_FILE"} | {n for pair in LIST_NAMES for n in pair}
    for name in VARIABLES:
        if name in skip:
            continue
        value = env_value(environ, name)
        if value is not None:
            data[name] = value
    data["_WARNINGS"] = warnings

    settings: Settings | None = None
    if "VSENSOR_HMAC_KEY" not in data:
        data["VSENSOR_HMAC_KEY"] = b"\0unset"  # placeholder so the other fields are still checked
    try:
        settings = Settings(**data)
    except ValidationError as err:
        for e in err.errors(include_url=False, include_input=False):
            problems.append(problem_from_error(e, names))

    # the memory queue holds at least two whole batches (a pooled batch buffer counts whole)
    if settings is not None and settings.queue_mb << 20 < 2 * settings.batch_max_bytes:
        need = -(-2 * settings.batch_max_bytes >> 20)
        problems.append(("OSSENSOR_QUEUE_MB", f"OSSENSOR_QUEUE_MB: {settings.queue_mb} MiB holds fewer than two "
                                              f"batches of OSSENSOR_BATCH_MAX_KB={settings.batch_max_bytes >> 10}; "
                                              f"raise OSSENSOR_QUEUE_MB to at least {need} or lower "
                                              "OSSENSOR_BATCH_MAX_KB"))

    # the TLS files' contents, whatever else is wrong (their own validators said whether they can be read)
    problems.extend(tls_problems(*(env_value(environ, n) for n in
                                   ("OSSENSOR_TLS_CA_FILE", "OSSENSOR_TLS_CERT_FILE", "OSSENSOR_TLS_KEY_FILE"))))
    problems = [(var, line) for var, line in problems if var not in unusable or line == unusable[var]]
    raise_problems(problems, (*VARIABLES, *proxy.PROXY_VARIABLES), key)
    assert settings is not None
    return settings
