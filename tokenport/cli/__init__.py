"""The `tokenport` command. Works with or without a running server: both share the database,
and a running server sees changes within a second."""

# One module per concern (serve, audit, tenancy, backends, billing, energy, fleets), each registering
# its subcommands.

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from tokenport.cli import audit, backends, billing, energy, fleets, serve, tenancy
from tokenport.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    from tokenport import __version__

    p = argparse.ArgumentParser(prog="tokenport", description=__doc__)
    p.add_argument("--version", action="version", version=f"tokenport {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def command(
        parent: Any, name: str, func: Callable[[argparse.Namespace], int], help_: str, creates: bool = False
    ):
        """`creates`: the command may create the database; the others need one already there."""
        c = parent.add_parser(name, help=help_)
        c.add_argument("--config", help="TOML config file (default: $TOKENPORT_HOME/tokenport.toml)")
        c.set_defaults(func=func, creates_database=creates)
        return c

    for module in (serve, audit, tenancy, backends, billing, energy, fleets):
        module.register(sub, command)
    return p


def main(argv: list[str] | None = None) -> int:
    from tokenport.energy.service import EnergyInputError
    from tokenport.store.energy import DuplicateCertificate
    from tokenport.tenancy.service import Conflict, InvalidInput, NotFound

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, not at exit: a reader that went away is handled below
        return code
    except (ConfigError, InvalidInput, NotFound, Conflict, EnergyInputError, DuplicateCertificate) as exc:
        print(f"tokenport: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tokenport ... | head`: the reader has what it wanted; exit quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
