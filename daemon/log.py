"""Structured logs: one line per event, key=value, to stderr (journald).

Usage: `log = get_logger("rpc"); log.info("listening", path=p)` prints
`level=info logger=rpc event=listening path=/run/aal-core/aal-core.sock`.
Under systemd (JOURNAL_STREAM set) the timestamp is left to journald.
Records of other libraries (asyncio's "Task exception was never retrieved",
Python warnings) go through the same one-line format as `event=log
message="..."`, so no multi-line text reaches the journal.
"""
from __future__ import annotations

import logging
import os
import sys
import threading

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def _fmt_value(v) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' "=\n\r\t'):
        s = '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r") + '"'
    return s


class KVFormatter(logging.Formatter):
    def __init__(self, with_time: bool):
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.with_time:
            parts.append("ts=" + self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}")
        parts.append("level=" + record.levelname.lower())
        parts.append("logger=" + record.name.removeprefix("aal_core."))
        kv = getattr(record, "kv", None)
        if kv is not None:
            parts.append("event=" + _fmt_value(record.msg))
            parts.extend(f"{k}={_fmt_value(v)}" for k, v in kv.items())
        else:  # another library's record: same grammar, its text as one value
            parts.append("event=log")
            parts.append("message=" + _fmt_value(record.getMessage()))
        if record.exc_info:
            parts.append("traceback=" + _fmt_value(self.formatException(record.exc_info)))
        return " ".join(parts)


class KVLogger:
    """A thin wrapper: log.info(event, **fields)."""

    __slots__ = ("_log",)

    def __init__(self, name: str):
        self._log = logging.getLogger("aal_core." + name)

    def _emit(self, level: int, event: str, fields: dict, exc_info=None):
        if self._log.isEnabledFor(level):
            self._log.log(level, event, extra={"kv": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields):
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields):
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields):
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, exc_info=None, **fields):
        self._emit(logging.ERROR, event, fields, exc_info)


def get_logger(name: str) -> KVLogger:
    return KVLogger(name)


def setup(level: str = "info") -> None:
    if level not in _LEVELS:
        raise ValueError(f"log level must be one of {sorted(_LEVELS)}, not {level!r}")
    root = logging.getLogger("aal_core")
    root.handlers.clear()
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(KVFormatter(with_time="JOURNAL_STREAM" not in os.environ))
    root.addHandler(h)
    root.setLevel(_LEVELS[level])
    root.propagate = False
    # Everything else (asyncio, py.warnings, ...): warnings and errors only.
    top = logging.getLogger()
    top.handlers.clear()
    top.addHandler(h)
    top.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    threading.excepthook = _thread_crash
    sys.unraisablehook = _unraisable


def _thread_crash(args) -> None:
    get_logger("daemon").error("thread_crash", exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
                               thread=getattr(args.thread, "name", "?"), error=repr(args.exc_value))


def _unraisable(args) -> None:
    exc = args.exc_value
    get_logger("daemon").error("unraisable", exc_info=(args.exc_type, exc, args.exc_traceback) if exc else None,
                               where=args.err_msg or "Exception ignored in", object=repr(args.object),
                               error=repr(exc))


def set_level(level: str) -> None:
    logging.getLogger("aal_core").setLevel(_LEVELS[level])
