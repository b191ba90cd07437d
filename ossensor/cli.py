"""Command line: `ossensor run | vsensor | interfaces`.

Every user error ends as one line per problem on standard error and exit status 2,
never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from ossensor import __version__
from ossensor.exits import EXIT_USAGE



def _cmd_run(args: argparse.Namespace) -> int:
    from ossensor import config

    try:
        settings = config.load()
    except config.ConfigError as err:
        for problem in err.problems:
            print(f"ossensor: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from ossensor.sensor import run

    return run(settings)


def _cmd_interfaces(args: argparse.Namespace) -> int:
    from ossensor.interfaces.report import main

    return main(as_json=args.json)


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from ossensor.ops.diagnose import main

    return main()


def _cmd_vsensor(args: argparse.Namespace) -> int:
    from ossensor.vsensor.server import main

    return main(args)


def _cmd_replay(args: argparse.Namespace) -> int:
    from ossensor.replay import main

    return main(args)


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The whole parser; with `command`, the options of only that subcommand are defined (the others
    keep their one-line help): `vsensor` and `replay` import TLS and certificate code that `run`
    has no use for (about 17 MiB of resident memory in every sensor process)."""
    parser = argparse.ArgumentParser(
        prog="ossensor",
        description="Open packet-capture sensor: captures this host's traffic and ships it, "
                    "HMAC-signed over HTTPS, to a vSensor. Configured by environment variables "
                    "(see README.md and docs/configuration.md).")
    parser.add_argument("--version", action="version", version=f"ossensor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p_run = sub.add_parser("run", help="start the sensor from the environment (the container's entrypoint)")
    p_run.set_defaults(func=_cmd_run)

    p_diag = sub.add_parser(
        "diagnose", help="check, from the sensor's environment, everything between this node and the vSensor",
        description="One verdict line per check, in order: configuration, capabilities, interfaces, bpf, "
                    "capture ring, dns, tcp (through HTTPS_PROXY if it applies), tls (certificate subject, "
                    "issuer, expiry, verification), key (a signed hello the vSensor acknowledges). Exit status "
                    "0 when all pass, 1 when a check fails, 2 when the configuration is invalid. Run it where "
                    "the sensor runs: kubectl exec <pod> -- ossensor diagnose. See docs/troubleshooting.md.")
    p_diag.set_defaults(func=_cmd_diagnose)

    p_if = sub.add_parser(
        "interfaces", help="list every interface: selected or not, and which rule decided",
        description="List this host's interfaces (netlink) and whether `ossensor run` would capture each, "
                    "with the rule and regex that decided. Reads OSSENSOR_NETWORK_DEVICE, "
                    "NETWORK_DEVICE_INCLUDELIST/EXCLUDELIST (and their old names) and NETWORK_DEVICE_ANY "
                    "like `run` does; needs neither VSENSOR_HOSTNAME nor the key.")
    p_if.add_argument("--json", action="store_true", help="machine-readable output for scripts")
    p_if.set_defaults(func=_cmd_interfaces)

    p_vs = sub.add_parser("vsensor", help="run the reference vSensor receiver")
    if command in ("*", "vsensor"):
        from ossensor.vsensor.server import add_arguments

        add_arguments(p_vs)
        from ossensor.vsensor.antigena import add_commands

        add_commands(p_vs)
    p_vs.set_defaults(func=_cmd_vsensor)

    p_rp = sub.add_parser("replay", help="replay pcap/pcapng files to the vSensor, or to a pcapng file (--out)")
    if command in ("*", "replay"):
        from ossensor.replay import add_arguments as add_replay_arguments

        add_replay_arguments(p_rp)
    p_rp.set_defaults(func=_cmd_replay)
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is not an option)."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(_command(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
