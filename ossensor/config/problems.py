"""Configuration problems: the error that carries them, and how they are worded and ordered.

Every problem is one line ``VARIABLE: reason``; load() collects all of them before it raises, so a user
fixes everything in one go. Lines come in the order of the documentation table, each once, the key redacted.
"""

from __future__ import annotations

from collections.abc import Sequence

from ossensor.config.key import redact


class ConfigError(Exception):
    """One or more configuration problems; ``problems`` holds one line each, ``"VARIABLE: reason"``."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


def problem_from_error(err: dict, names: dict[str, str]) -> tuple[str, str]:
    loc = err.get("loc") or ("",)
    alias = str(loc[0])
    var = names.get(alias, alias)
    if err.get("type") == "missing":
        return var, f"{var}: required, not set"
    ctx = err.get("ctx") or {}
    reason = str(ctx.get("error")) if "error" in ctx else err.get("msg", "invalid value")
    reason = " ".join(reason.split())  # exactly one line
    return var, f"{var}: {reason}"


def raise_problems(problems: list[tuple[str, str]], order: Sequence[str], key: bytes | None) -> None:
    """Raise ConfigError with `problems` ((variable, line) pairs) in the order of `order`, each line once,
    the key redacted; return when there is none."""
    if not problems:
        return
    rank = {name: i for i, name in enumerate(order)}
    seen: set[str] = set()
    lines = []
    for _, line in sorted(problems, key=lambda p: rank.get(p[0], len(rank))):
        line = redact(line, key)
        if line not in seen:
            seen.add(line)
            lines.append(line)
    raise ConfigError(lines)
