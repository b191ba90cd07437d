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

from ossensor.config.key import KEY_FILE_MAX_BYTES, KEY_MIN_BYTES, REDACTED, read_hmac_key
from ossensor.config.problems import ConfigError
from ossensor.config.settings import DEFAULT_CONFIG_PATH, VARIABLES, Settings, load
from ossensor.config.ini import render_config, write_config_file

__all__ = ["ConfigError", "Settings", "load", "read_hmac_key", "write_config_file", "render_config",
           "DEFAULT_CONFIG_PATH", "REDACTED", "VARIABLES", "KEY_MIN_BYTES", "KEY_FILE_MAX_BYTES"]
