"""The few variables `ossensor replay --out` and `ossensor interfaces` read, checked with the same parsers
and wording as `ossensor run` (values.py), without the settings model: importing pydantic and
pydantic-settings and building the model costs ~150 ms, more than reading a small capture file, paid by
every run of a shell loop over many files. Variables these commands have no use for (the vSensor's, the
queue's...) are not read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ossensor.config import values as V
from ossensor.config.problems import raise_problems

LOCAL_VARIABLES = ("OSSENSOR_DEBUG", "BPF", "OSSENSOR_LOGFILE_PATH", "OSSENSOR_SNAPLEN", "OSSENSOR_BATCH_MAX_KB",
                   "OSSENSOR_BATCH_MAX_AGE_MS", "OSSENSOR_LOG_FORMAT")


@dataclass
class LocalSettings:
    """What replay to a file uses of Settings, under the same names."""
    debug: int = 1
    bpf: str = ""
    logfile: Path | None = None
    snaplen: int = 262144
    batch_max_bytes: int = 4096 * 1024
    batch_max_age_ms: int = 1000
    log_format: str = "plain"
    key_bytes: bytes = b""   # no key: nothing is signed
    spool_dir: None = None
    warnings: tuple = ()


_PARSERS = {"OSSENSOR_DEBUG": ("debug", V.debug_level), "OSSENSOR_LOGFILE_PATH": ("logfile", V.writable_file_path),
            "OSSENSOR_SNAPLEN": ("snaplen", V.snaplen), "OSSENSOR_BATCH_MAX_KB": ("batch_max_bytes", V.batch_bytes),
            "OSSENSOR_BATCH_MAX_AGE_MS": ("batch_max_age_ms", V.batch_age_ms),
            "OSSENSOR_LOG_FORMAT": ("log_format", V.log_format)}


def load_local(environ: Mapping[str, str]) -> LocalSettings:
    """LocalSettings from `environ`; ConfigError (problems.py) listing every problem, as config.load()."""
    out = LocalSettings()
    problems: list[tuple[str, str]] = []
    for name in LOCAL_VARIABLES:
        raw = V.env_value(environ, name)
        if raw is None:
            continue
        why = V.text_problem(str(raw))
        if why:
            problems.append((name, f"{name}: {why}"))
            continue
        try:
            if name == "BPF":
                continue  # below
            field, parse = _PARSERS[name]
            setattr(out, field, parse(raw))
        except ValueError as err:
            problems.append((name, f"{name}: {' '.join(str(err).split())}"))
    bpf = V.env_value(environ, "BPF")
    if bpf is not None and bpf.strip() and not any(n == "BPF" for n, _ in problems):
        # not compiled here for Ethernet: replay compiles it for each interface of each file, for its link
        # type, and refuses it there as tcpdump -r does (an 802.11 `type mgt` is no error on an 802.11 file)
        out.bpf = bpf
    raise_problems(problems, LOCAL_VARIABLES, None)
    return out


# (new name, old name) of the interface lists: both still accepted, the old one with a warning
LIST_NAMES = [("NETWORK_DEVICE_EXCLUDELIST", "NETWORK_DEVICE_BLACKLIST"),
              ("NETWORK_DEVICE_INCLUDELIST", "NETWORK_DEVICE_WHITELIST")]


def read_lists(environ: Mapping[str, str]):
    """The interface lists under their new or old names: ({new name: raw value}, {new name: name the user
    set}, warnings, problems as (variable, line)). Shared by config.load() and load_selection()."""
    data, names, warnings, problems = {}, {}, [], []
    for new, old in LIST_NAMES:
        new_value, old_value = V.env_value(environ, new), V.env_value(environ, old)
        if new_value is not None and old_value is not None:
            problems.append((new, f"{new}: both {new} and its old name {old} are set; set only {new}"))
        elif old_value is not None:
            warnings.append(f"{old} is deprecated; use {new} instead")
            data[new] = old_value
            names[new] = old
        elif new_value is not None:
            data[new] = new_value
    return data, names, warnings, problems


SELECTION_VARIABLES = ("OSSENSOR_NETWORK_DEVICE", "NETWORK_DEVICE_EXCLUDELIST", "NETWORK_DEVICE_BLACKLIST",
                       "NETWORK_DEVICE_INCLUDELIST", "NETWORK_DEVICE_WHITELIST", "NETWORK_DEVICE_ANY")


@dataclass
class SelectionSettings:
    """What `ossensor interfaces` uses of Settings, under the same names."""
    network_device: str | None = None
    include_list: list = None
    exclude_list: list = None
    device_any: bool = False
    warnings: list = None


def load_selection(environ: Mapping[str, str]) -> SelectionSettings:
    """The interface-selection variables, checked exactly as `run` checks them (same messages, same legacy
    names), without VSENSOR_HOSTNAME or the key. ConfigError listing every problem."""
    data, names, warnings, problems = read_lists(environ)
    out = SelectionSettings(include_list=[], exclude_list=[], warnings=warnings)
    raw = {**data, **{n: V.env_value(environ, n) for n in ("OSSENSOR_NETWORK_DEVICE", "NETWORK_DEVICE_ANY")}}
    fields = {"OSSENSOR_NETWORK_DEVICE": ("network_device", V.parse_ifname),
              "NETWORK_DEVICE_EXCLUDELIST": ("exclude_list", V.parse_regex_list),
              "NETWORK_DEVICE_INCLUDELIST": ("include_list", V.parse_regex_list),
              "NETWORK_DEVICE_ANY": ("device_any", V.parse_bool)}
    for name, (field, parse) in fields.items():
        value = raw.get(name)
        if value is None:
            continue
        shown = names.get(name, name)
        why = V.text_problem(str(value))
        if why:
            problems.append((shown, f"{shown}: {why}"))
            continue
        try:
            setattr(out, field, parse(value))
        except ValueError as err:
            problems.append((shown, f"{shown}: {' '.join(str(err).split())}"))
    raise_problems(problems, SELECTION_VARIABLES, None)
    return out
