"""Logging for the gateway's processes (the server and its writer process): one format, and at
`debug` every SQL statement with its parameters (content-free: no table holds request text).

The embedded engine's console goes into the same log. llama.cpp runs inside the gateway process
and writes its log lines (errors only, at the verbosity the engine is given: never prompts)
straight to file descriptor 2, in its own format and colours. `fold_native_output` points
descriptor 2 at a pipe, gives Python's `sys.stderr` (and child processes) a copy of the real
one, and has a thread turn each line that arrives on the pipe into a record of the
`tokenport.engine` logger; lines already in the gateway's format pass through as they are.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level_name: str) -> None:
    logging.basicConfig(level=getattr(logging, level_name.upper()), format=FORMAT)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if level_name == "debug":
        logging.getLogger("sqlalchemy.engine").setLevel(logging.DEBUG)


# --- the embedded engine's console ---

log = logging.getLogger("tokenport.engine")

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# llama.cpp's prefix: an optional timestamp ("0.36.137.424") and a level letter.
_PREFIX = re.compile(r"^(?:\d+\.\d+\.\d+\.\d+ )?([DIWE]) +")
_LEVELS = {"D": logging.DEBUG, "I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR}
_OURS = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")  # logs.py's format
_real: list = []  # the real standard error, once descriptor 2 is the pipe


def real_stderr():
    """What a child process should write its errors to: the real standard error once it has
    been folded (None: descriptor 2 is still the real one, inherit it)."""
    return _real[0] if _real else None


def engine_record(line: str) -> tuple[int, str] | None:
    """(level, message) for one line the engine wrote; None for a blank one."""
    text = _ANSI.sub("", line).rstrip()
    if not text.strip():
        return None
    m = _PREFIX.match(text)
    if m is None:
        return logging.WARNING, text.strip()
    return _LEVELS[m.group(1)], text[m.end() :].strip()


def fold_native_output() -> None:
    """From now on, what is written to descriptor 2 goes through logging (see the module's doc).
    Call it before logging is configured, so that its handlers write to the new `sys.stderr`."""
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = open(real, "w", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    _real.append(sys.stderr)
    threading.Thread(target=_pump, args=(read_end,), name="engine-console", daemon=True).start()


def _pump(fd: int) -> None:
    with open(fd, encoding="utf-8", errors="replace") as pipe:
        for line in pipe:
            if _OURS.match(line):
                sys.stderr.write(line)
                continue
            record = engine_record(line)
            if record is not None:
                log.log(*record)
