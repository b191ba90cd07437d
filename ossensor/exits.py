"""Exit statuses every command shares, and the start-up failure that carries one.

A small leaf module: the orchestrator (sensor.py), the control plane (ops/) and every command import it,
and it imports nothing of ossensor, so no stage has to import another to say "exit 2".
"""

EXIT_OK = 0
EXIT_FAIL = 1         # the environment failed us (no permission, the ring could not be had, ...)
EXIT_USAGE = 2        # the user's input is wrong: a variable, an argument, a file
EXIT_INTERRUPTED = 130  # Ctrl-C during a command that had not finished (128 + SIGINT)


class Fatal(Exception):
    """A start-up failure: one line, then exit with `status`."""

    def __init__(self, msg: str, status: int = EXIT_FAIL):
        super().__init__(msg)
        self.status = status
