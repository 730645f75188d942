"""Error types, one family per layer, and the JSON-RPC codes they map to.

A raw OSError never reaches a client: each layer raises its own error, and
the RPC layer translates it into a JSON-RPC error object with a documented
code (see README, "Error codes").
"""
from __future__ import annotations

# JSON-RPC 2.0 standard codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# aal-core application codes (-32000 .. -32099 is the implementation range).
PERMISSION_DENIED = -32001      # method needs write/admin access the peer lacks
FRAME_TOO_LARGE = -32002        # frame over rpc.max_frame_bytes; connection closed
SOURCE_ABSENT = -32003          # a sensing source is not present (e.g. no tegrastats)
NOT_FOUND = -32004              # a named object (job, subscription, entry) does not exist
ADMISSION_REFUSED = -32005      # job refused: stress >= 0.98 and priority <= 3
LEDGER_ERROR = -32006           # ledger append/read failed (e.g. disk full); ledger intact
CONFLICT = -32007               # object already exists / state does not allow the call
OVERLOADED = -32008             # too many connections / server shutting down
QUARANTINED = -32009            # admissions at this priority are quarantined
CONFIG_INVALID = -32010         # system.reload: the config file is wrong (names key and file); old config kept
BUDGET_EXCEEDED = -32011        # a per-peer budget ([budget]) is used up; data names it, the limit and the use
REPLY_TOO_LARGE = -32012        # a result over rpc.max_reply_bytes: the call ran, its result is not sent
# Overlays (README, "Overlays"): -32020..-32029.  JSON-RPC errors for bad
# names; the others are ok:false results of overlay.invoke (error.code).
OVERLAY_INVALID = -32020        # a manifest or overlay directory that cannot be used (every problem in data)
OVERLAY_PHASE_REFUSED = -32021  # the phase is not declared, or its class may not run in it; nothing ran
OVERLAY_UNKNOWN_CAPABILITY = -32022  # the overlay has no such capability (JSON-RPC error)
OVERLAY_TIMEOUT = -32023        # the call ran past its timeout_s; its process group was killed
OVERLAY_CRASHED = -32024        # exited non-zero, killed by a signal (OOM in its cgroup), HTTP non-2xx
OVERLAY_BAD_OUTPUT = -32025     # stdout/response not one JSON object, or over its size limit
OVERLAY_DISABLED = -32026       # the overlay is disabled or its manifest is broken
OVERLAY_CONFINEMENT = -32027    # the phase's confinement is not available here (CLEAR refused, not run unconfined)
OVERLAY_UNREACHABLE = -32028    # an http overlay refused connections through every retry
PROVENANCE_ERROR = -32029       # the provenance log could not be written or read

APP_CODES = {
    PERMISSION_DENIED: "permission denied",
    FRAME_TOO_LARGE: "frame too large",
    SOURCE_ABSENT: "source absent",
    NOT_FOUND: "not found",
    ADMISSION_REFUSED: "admission refused",
    LEDGER_ERROR: "ledger error",
    CONFLICT: "conflict",
    OVERLOADED: "overloaded",
    QUARANTINED: "quarantined",
    CONFIG_INVALID: "config invalid",
    BUDGET_EXCEEDED: "budget exceeded",
    REPLY_TOO_LARGE: "reply too large",
    OVERLAY_INVALID: "overlay invalid",
    OVERLAY_PHASE_REFUSED: "phase refused",
    OVERLAY_UNKNOWN_CAPABILITY: "unknown capability",
    OVERLAY_TIMEOUT: "overlay timeout",
    OVERLAY_CRASHED: "overlay crashed",
    OVERLAY_BAD_OUTPUT: "overlay bad output",
    OVERLAY_DISABLED: "overlay disabled",
    OVERLAY_CONFINEMENT: "confinement unavailable",
    OVERLAY_UNREACHABLE: "overlay unreachable",
    PROVENANCE_ERROR: "provenance error",
}


class AalError(Exception):
    """Base of every error aal-core raises on purpose."""


class ConfigError(AalError):
    """A configuration file or option is wrong; names the key and the file."""


class SourceError(AalError):
    """A sensing source could not be read; names the path or command."""


class ParseError(AalError):
    """Text that does not follow its grammar; carries line and column."""

    def __init__(self, message: str, *, line: int = 1, column: int = 1,
                 expected: str = "", found: str = ""):
        super().__init__(message)
        self.line = line
        self.column = column
        self.expected = expected
        self.found = found

    def to_data(self) -> dict:
        return {"line": self.line, "column": self.column,
                "expected": self.expected, "found": self.found}


class LedgerError(AalError):
    """The ledger could not append, read or verify; carries the bad index if any."""

    def __init__(self, message: str, *, index: int | None = None):
        super().__init__(message)
        self.index = index


class RpcError(AalError):
    """An error to send to a JSON-RPC client as-is."""

    def __init__(self, code: int, message: str, data=None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_obj(self) -> dict:
        err = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def invalid_params(message: str, **data) -> RpcError:
    return RpcError(INVALID_PARAMS, message, data or None)


def not_found(message: str, **data) -> RpcError:
    return RpcError(NOT_FOUND, message, data or None)
