"""Every variable `ossensor run` reads, driven with arbitrary text and bytes (hypothesis): the answer is
always settings or one line per problem naming its variable, never a traceback, never a flood.

In process: config.load() (what `ossensor run` calls first) with each variable set to arbitrary text,
undecodable bytes (kept by Python as lone surrogates), NUL, newlines, huge values and paths to special
files. Through the command line: a few hundred real runs of `ossensor run` with VSENSOR_PORT=0 (so every
run ends at the configuration check): exit status 2, nothing on standard output, only `ossensor: VAR: …`
lines on standard error, at most one per variable. Bounded: a fixed number of examples, no deadline."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ossensor import config
from ossensor.ship.proxy import PROXY_VARIABLES

from support import KEY, ROOT

NAMES = [*config.VARIABLES, *PROXY_VARIABLES]
LINE_MAX = 600  # a problem line: the variable, the reason, a value shortened to 80 characters


@pytest.fixture(scope="module")
def special(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("special")
    fifo = d / "fifo"
    os.mkfifo(fifo)
    (d / "file").write_text("not a certificate\n")
    return ["/dev/zero", "/dev/null", "/dev/stdin", str(fifo), str(d), str(d / "file"), str(d / "file" / "x"),
            "/proc/self/mem", "/", "", " ", "-", "..", "/tmp/" + "a" * 300, "/tmp/" + "b/" * 3000]


def values(special: list[str]):
    undecodable = st.lists(st.integers(0x80, 0xff), min_size=1, max_size=4).map(
        lambda bs: "/tmp/" + bytes(bs).decode("utf-8", "surrogateescape"))
    return st.one_of(
        st.text(max_size=40),
        st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10ffff), max_size=300),
        undecodable,
        st.sampled_from(special),
        st.integers(-2**70, 2**70).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(str),
        st.sampled_from(["x" * 100_000, "1" * 5000, "0x10", "1e3", "true\n", "a\nb", "\0", "on\0",
                         "http://[::1", "http://h:99999", "socks5://p:1", "[", "(", "*", "\\", "%s%n"]),
    )


def base_env(tmp: str) -> dict[str, str]:
    return {"VSENSOR_HOSTNAME": "vsensor.example", "VSENSOR_HMAC_KEY": KEY,
            "OSSENSOR_CONFIG_PATH": os.path.join(tmp, "ossensor.cfg")}


def check_lines(lines: list[str]) -> None:
    seen = set()
    for line in lines:
        assert "\n" not in line and len(line) <= LINE_MAX, line[:300]
        name = line.split(":", 1)[0]
        assert name in NAMES, line[:300]
        assert name not in seen, f"two lines for {name}: {lines}"
        seen.add(name)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_load_answers_settings_or_one_line_per_variable(data, special, tmp_path_factory):
    tmp = str(tmp_path_factory.getbasetemp())
    env = base_env(tmp)
    for name in data.draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True)):
        env[name] = data.draw(values(special))
    try:
        config.load(env)
    except config.ConfigError as err:
        assert err.problems, "a ConfigError without a problem"
        check_lines(err.problems)


CLI_NAMES = [n for n in NAMES if n != "VSENSOR_PORT"]


@pytest.mark.timeout(240)
@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(data=st.data())
def test_run_with_bad_values_exit_2_one_line_each_no_traceback(data, special, tmp_path_factory):
    tmp = str(tmp_path_factory.getbasetemp())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSENSOR_", "OSSENSOR_", "BPF", "NETWORK_",
                                                                     "ANTIGENA_", "INTERFACE_"))
           and k not in PROXY_VARIABLES}
    env.update(base_env(tmp), PYTHONPATH=str(ROOT), VSENSOR_PORT="0")  # always a problem: the run ends at the check
    for name in data.draw(st.lists(st.sampled_from(CLI_NAMES), min_size=1, max_size=4, unique=True)):
        env[name] = data.draw(values(special).filter(lambda v: "\0" not in v))  # an environment holds no NUL
    r = subprocess.run([sys.executable, "-m", "ossensor", "run"], env=env, capture_output=True, timeout=60)
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2, err[-2000:]
    assert r.stdout == b"", r.stdout[-500:]
    assert "Traceback" not in err
    lines = err.splitlines()
    assert all(line.startswith("ossensor: ") for line in lines), err[-2000:]
    check_lines([line[len("ossensor: "):] for line in lines])
    assert any(line.startswith("ossensor: VSENSOR_PORT: ") for line in lines)


def test_a_huge_value_is_shortened_with_its_length(tmp_path):
    env = base_env(str(tmp_path))
    env["OSSENSOR_DEBUG"] = "9" * 100_000
    with pytest.raises(config.ConfigError) as info:
        config.load(env)
    (line,) = info.value.problems
    assert line.endswith("... (100000 characters)") and len(line) < 200


def test_undecodable_bytes_name_the_variable(tmp_path):
    env = base_env(str(tmp_path))
    env["OSSENSOR_TLS_CA_FILE"] = b"/tmp/\xff".decode("utf-8", "surrogateescape")
    env["OSSENSOR_SPOOL_DIR"] = "/tmp/" + "a" * 300
    with pytest.raises(config.ConfigError) as info:
        config.load(env)
    assert info.value.problems[0] == "OSSENSOR_TLS_CA_FILE: is not UTF-8 text (byte 0xff at character 6)"
    # a long path keeps its end, like every other path in a message
    assert re.fullmatch(r"OSSENSOR_SPOOL_DIR: \.\.\.'a+' \(305 characters\): File name too long",
                        info.value.problems[1])


def test_proxy_and_config_path_reported_with_the_others(tmp_path):
    env = base_env(str(tmp_path))
    env.update(HTTPS_PROXY="nan", VSENSOR_PORT="0", OSSENSOR_CONFIG_PATH="/dev/null")
    with pytest.raises(config.ConfigError) as info:
        config.load(env)
    assert info.value.problems == [
        "VSENSOR_PORT: must be an integer 1-65535, got '0'",
        "OSSENSOR_CONFIG_PATH: /dev/null is not a regular file",
        "HTTPS_PROXY: 'nan' is not an http:// proxy URL; write it as http://host:port (an HTTP CONNECT proxy), "
        "e.g. http://proxy.example:3128"]


def test_key_file_fifo_refused_at_once_and_newlines_stripped_both_ways(tmp_path):
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    env = base_env(str(tmp_path))
    del env["VSENSOR_HMAC_KEY"]
    env["VSENSOR_HMAC_KEY_FILE"] = str(fifo)
    with pytest.raises(config.ConfigError) as info:
        config.load(env)  # returns at once: the FIFO is never opened for reading
    from ossensor.config.values import clip

    assert info.value.problems == [f"VSENSOR_HMAC_KEY_FILE: {clip(fifo)} is not a regular file"]
    (tmp_path / "k").write_bytes(KEY.encode() + b"\n")
    from_file = config.load(dict(env, VSENSOR_HMAC_KEY_FILE=str(tmp_path / "k"))).key_bytes
    from_var = config.load(dict(base_env(str(tmp_path)), VSENSOR_HMAC_KEY=KEY + "\n")).key_bytes
    assert from_file == from_var == KEY.encode()
