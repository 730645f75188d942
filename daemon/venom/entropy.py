"""The entropy model, evaluated without torch: threat = σ(w·anoms + b).

The client trains `torch.nn.Linear(1, 1)` + sigmoid
(`aal_core.client.entropy`) and exports its two parameters to a small JSON
file; the daemon loads it (`venom.set_model`) and computes the same function
here in float64 from the exact float32 values torch used.  A test shows the
two agree to 1e-6.

File format (`aal-core.entropy.v1`), UTF-8 JSON:

    {"format": "aal-core.entropy.v1", "weight": 0.12, "bias": 0.0, ...}

Extra keys (training metadata) are kept but not used.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

from ..errors import AalError
from ..ledger.store import create_atomic

__all__ = ["FORMAT", "ML_WEIGHT", "EntropyParams", "ModelError", "load_model", "sigmoid", "write_model"]

FORMAT = "aal-core.entropy.v1"
ML_WEIGHT = 0.12
MAX_MODEL_BYTES = 64 * 1024


class ModelError(AalError):
    """A model file that cannot be used; names the path and what is wrong."""


def sigmoid(z: float) -> float:
    """Logistic function, overflow-free for any finite z."""
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


@dataclass(frozen=True)
class EntropyParams:
    weight: float = ML_WEIGHT
    bias: float = 0.0
    source: str = "default"
    digest: str = ""        # SHA3-256 of the file the params came from
    meta: dict = field(default_factory=dict, compare=False)

    def threat(self, anoms: float) -> float:
        """The E core's score: σ(w·anoms + b), in [0, 1]."""
        return sigmoid(self.weight * anoms + self.bias)

    def to_dict(self) -> dict:
        out = {"weight": self.weight, "bias": self.bias, "source": self.source}
        if self.digest:
            out["sha3"] = self.digest
        return out


def _finite(obj: dict, key: str, path: str) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ModelError(f"{path}: '{key}' must be a number, got {type(v).__name__} {v!r}")
    v = float(v)
    if not math.isfinite(v):
        raise ModelError(f"{path}: '{key}' must be finite, got {v!r}")
    return v


def parse_model(raw: bytes, path: str) -> EntropyParams:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise ModelError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    if obj.get("format") != FORMAT:
        raise ModelError(f"{path}: 'format' must be {FORMAT!r}, got {obj.get('format')!r}")
    w = _finite(obj, "weight", path)
    b = _finite(obj, "bias", path)
    meta = {k: v for k, v in obj.items() if k not in ("format", "weight", "bias")}
    return EntropyParams(w, b, source=path, digest=hashlib.sha3_256(raw).hexdigest(), meta=meta)


def load_model(path: str) -> EntropyParams:
    """Read and validate a model file; ModelError says why it is unusable."""
    try:
        size = os.stat(path).st_size
        if size > MAX_MODEL_BYTES:
            raise ModelError(f"{path}: {size} bytes is too large for a model file (limit {MAX_MODEL_BYTES})")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MODEL_BYTES + 1)
    except FileNotFoundError:
        raise ModelError(f"{path}: model file not found") from None
    except IsADirectoryError:
        raise ModelError(f"{path}: is a directory, not a model file") from None
    except PermissionError:
        raise ModelError(f"{path}: model file not readable (permission denied)") from None
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file: {exc.strerror or exc}") from None
    return parse_model(raw, path)


def dump_model(weight: float, bias: float, **meta) -> bytes:
    """The file contents for these parameters (floats written with repr, exact)."""
    obj = {"format": FORMAT, "weight": float(weight), "bias": float(bias)}
    obj.update(meta)
    return (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode()


def write_model(path: str, weight: float, bias: float, **meta) -> None:
    """Write a model file atomically (the ledger store's create_atomic), so a
    reader never sees half of one.  0644 exactly: the daemon, another user,
    loads what a client exports.  A failure raises ModelError (path, cause)."""
    create_atomic(path, dump_model(weight, bias, **meta), "cannot write model file", mode=0o644,
                  error=ModelError)
