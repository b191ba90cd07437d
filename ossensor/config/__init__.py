"""Configuration from environment variables (read once at start).

settings.py holds the model and load(), values.py the parsers and their wording, problems.py the
error and how its lines are ordered, key.py the HMAC key, ini.py the generated file.

``load()`` reads the variables of docs/SPEC (``VSENSOR_HOSTNAME``, ``VSENSOR_HMAC_KEY`` ...), checks every
one of them and raises a single :class:`ConfigError` listing *all* the problems, one line each, in the
form ``VARIABLE_NAME: reason``. The CLI prints those lines and exits with status 2.

Validation runs through a pydantic-settings ``BaseSettings`` model (:class:`Settings`) whose fields are
aliased to the environment variable names; ``load()`` feeds it from a mapping (``os.environ`` by default,
a plain dict in tests) and turns pydantic's errors into the one-line messages.

Rules worth knowing:

* An empty (or all-blank) variable counts as not set: its default applies.
* ``VSENSOR_HMAC_KEY`` is used verbatim; ``VSENSOR_HMAC_KEY_FILE`` is read as bytes and trailing
  whitespace/newlines are stripped (``echo key > file`` and ``kubectl create secret --from-file`` leave
  a newline). Setting both is an error. The key never appears in a problem, ``repr``, ``str``, the
  summary or the generated file.
* ``VSENSOR_HOSTNAME`` is a DNS name, an IPv4 address, or an IPv6 address (bare ``fd00::5`` or in brackets
  ``[fd00::5]``, the brackets are removed). A port inside it (``host:443``, ``1.2.3.4:80``,
  ``[::1]:443``) is an error: the port goes in ``VSENSOR_PORT``.
* Booleans accept ``true/false``, ``1/0``, ``yes/no``, ``on/off`` (any case).
* ``NETWORK_DEVICE_BLACKLIST``/``NETWORK_DEVICE_WHITELIST`` are still accepted for the exclude/include
  lists, with a warning (``Settings.warnings``); setting the old and the new name of one list is an error.
* ``BPF`` is compiled with libpcap (capture/pcapcompile.py) for an Ethernet link at ``OSSENSOR_SNAPLEN``, so a
  filter that libpcap refuses is reported at start with libpcap's reason.
"""

# Names are imported on first use (PEP 562): `ossensor replay --out` reads its few variables through
# config/local.py and must not pay for the settings model (pydantic) that importing settings.py costs.
_WHERE = {"ConfigError": "problems", "Settings": "settings", "load": "settings", "DEFAULT_CONFIG_PATH": "settings",
          "VARIABLES": "settings", "read_hmac_key": "key", "REDACTED": "key", "KEY_MIN_BYTES": "key",
          "KEY_FILE_MAX_BYTES": "key", "write_config_file": "ini", "render_config": "ini"}

__all__ = sorted(_WHERE)


_MODULES = ("settings", "values", "problems", "key", "ini", "local")


def __getattr__(name: str):
    import importlib

    if name in _MODULES:  # config.values, ... as attributes, as if imported eagerly
        return importlib.import_module(f"ossensor.config.{name}")
    if name not in _WHERE:
        raise AttributeError(f"module 'ossensor.config' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ossensor.config.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
