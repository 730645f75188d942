"""Memory runes: the text a workload declares its memory contract in.

    MEM[SOFT=2048,HARD=4096,VOL=MED]; KV[CAP=0.2,POLICY=WINDOW,PURGE=ON_STRESS];
    TIER=EXTENDED; PRIORITY=5; DEGRADE{STEP1:SHRINK_KV(0.75),STEP2:CONTEXT(4096)}

Grammar (whitespace and newlines are free between tokens; clauses are
separated by `;`, a trailing `;` is allowed; each clause at most once):

    profile  := clause (';' clause)* [';']
    clause   := 'MEM' '[' 'SOFT' '=' int ',' 'HARD' '=' int ',' 'VOL' '=' LOW|MED|HIGH ']'   (required)
              | 'KV' '[' 'CAP' '=' number ',' 'POLICY' '=' LRU|WINDOW|TASK_BOUND ','
                         'PURGE' '=' ON_STRESS|ON_EVENT|ON_STRESS_OR_EVENT ']'
              | 'TIER' '=' LOCAL|EXTENDED|COLD                                  (default LOCAL)
              | 'PRIORITY' '=' digit                                            (default 5)
              | 'DEGRADE' '{' step (',' step)* '}'
    step     := 'STEP' int ':' action '(' arg ')'
    action   := SHRINK_KV(fraction in (0,1]) | CONTEXT(positive int) | DISABLE(name)
              | BATCH(name) | OFFLOAD(tier)

Keys inside MEM[...] and KV[...] may come in any order, each exactly once.
Every error is an `aal_core.errors.ParseError` with the line and column of
the offending text, what was expected there and the text found (quoted in the
message too).  `format_profile(parse(text))` is the canonical text, and it
parses back to the same `Profile`.  `to_json`/`from_json` use the seed's
field names.
"""
from __future__ import annotations

import decimal
import re
from dataclasses import dataclass

from .errors import ParseError

__all__ = ["Mem", "KV", "Step", "Profile", "PROFILES", "VOLATILITIES", "POLICIES", "PURGES",
           "PURGES_ON_STRESS", "PURGES_ON_EVENT", "TIERS", "ACTIONS", "parse", "format_profile",
           "to_json", "step_json", "from_json", "resolve", "ParseError"]

VOLATILITIES = ("LOW", "MED", "HIGH")
POLICIES = ("LRU", "WINDOW", "TASK_BOUND")
PURGES = ("ON_STRESS", "ON_EVENT", "ON_STRESS_OR_EVENT")
PURGES_ON_STRESS = ("ON_STRESS", "ON_STRESS_OR_EVENT")    # the PURGE values that purge on stress
PURGES_ON_EVENT = ("ON_EVENT", "ON_STRESS_OR_EVENT")      # ... and on an event
TIERS = ("LOCAL", "EXTENDED", "COLD")
ACTIONS = ("SHRINK_KV", "CONTEXT", "DISABLE", "BATCH", "OFFLOAD")
MAX_MB = 1 << 30            # 1 EiB: beyond this a cap is a typo
MAX_CONTEXT = 1 << 31
MAX_STEP = 1000


# --------------------------------------------------------------- the model

@dataclass(frozen=True)
class Mem:
    soft_mb: int
    hard_mb: int
    volatility: str


@dataclass(frozen=True)
class KV:
    cap_fraction: float
    policy: str
    purge: str

    @property
    def purge_on_stress(self) -> bool:
        return self.purge in PURGES_ON_STRESS

    @property
    def purge_on_event(self) -> bool:
        return self.purge in PURGES_ON_EVENT


@dataclass(frozen=True)
class Step:
    order: int
    action: str
    arg: object          # float (SHRINK_KV), int (CONTEXT), str (DISABLE/BATCH/OFFLOAD)


@dataclass(frozen=True)
class Profile:
    mem: Mem
    kv: KV | None = None
    tier: str = "LOCAL"
    priority: int = 5
    degrade: tuple[Step, ...] | None = None

    @property
    def steps(self) -> tuple[Step, ...]:
        return self.degrade or ()


# ------------------------------------------------------------------ scanner

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[\[\]{}();:,=])
""", re.VERBOSE)


@dataclass(frozen=True)
class _Tok:
    kind: str       # "num", "name", "punct", "bad", "end"
    text: str
    pos: int


def _tokens(text: str) -> list[_Tok]:
    out: list[_Tok] = []
    i, n = 0, len(text)
    while i < n:
        m = _TOKEN.match(text, i)
        if m is None:
            # One bad character (or a run of them): reported where it is met.
            j = i + 1
            while j < n and _TOKEN.match(text, j) is None:
                j += 1
            out.append(_Tok("bad", text[i:j], i))
            i = j
            continue
        if m.lastgroup != "ws":
            out.append(_Tok(m.lastgroup, m.group(), i))
        i = m.end()
    out.append(_Tok("end", "", n))
    return out


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


def _show(tok: _Tok) -> str:
    if tok.kind == "end":
        return "end of input"
    t = tok.text if len(tok.text) <= 40 else tok.text[:37] + "..."
    return repr(t)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0

    # -- helpers
    def peek(self) -> _Tok:
        return self.toks[self.i]

    def next(self) -> _Tok:
        t = self.toks[self.i]
        if t.kind != "end":
            self.i += 1
        return t

    def fail(self, tok: _Tok, expected: str, why: str = "") -> ParseError:
        line, col = _line_col(self.text, tok.pos)
        found = "end of input" if tok.kind == "end" else tok.text
        msg = f"line {line}, column {col}: expected {expected}, found {_show(tok)}"
        if why:
            msg += f" ({why})"
        return ParseError(msg, line=line, column=col, expected=expected, found=found)

    def punct(self, ch: str, expected: str | None = None) -> _Tok:
        t = self.next()
        if t.kind != "punct" or t.text != ch:
            raise self.fail(t, expected or f"'{ch}'")
        return t

    def word(self, choices, expected: str) -> _Tok:
        t = self.next()
        if t.kind != "name" or t.text not in choices:
            raise self.fail(t, expected)
        return t

    def integer(self, expected: str, lo: int, hi: int) -> int:
        t = self.next()
        if t.kind != "num" or not t.text.isdigit():
            raise self.fail(t, expected)
        if len(t.text) > 19:
            raise self.fail(t, expected, f"out of range {lo}..{hi}")
        v = int(t.text)
        if not lo <= v <= hi:
            raise self.fail(t, expected, f"out of range {lo}..{hi}")
        return v

    def fraction(self, expected: str) -> float:
        """A number in (0, 1]."""
        t = self.next()
        if t.kind != "num":
            raise self.fail(t, expected)
        v = float(t.text)
        if not 0.0 < v <= 1.0:
            raise self.fail(t, expected)
        return v

    # -- grammar
    def profile(self) -> Profile:
        seen: dict[str, _Tok] = {}
        values: dict[str, object] = {}
        clause_names = ("MEM", "KV", "TIER", "PRIORITY", "DEGRADE")
        expected = "a clause (MEM[...], KV[...], TIER=, PRIORITY=, DEGRADE{...})"
        while True:
            t = self.next()
            if t.kind != "name" or t.text not in clause_names:
                raise self.fail(t, expected)
            if t.text in seen:
                first = _line_col(self.text, seen[t.text].pos)
                raise self.fail(t, f"each clause at most once",
                                f"{t.text} already given at line {first[0]}, column {first[1]}")
            seen[t.text] = t
            values[t.text] = getattr(self, "_" + t.text.lower())()
            end = self.next()
            if end.kind == "end":
                break
            if end.kind != "punct" or end.text != ";":
                raise self.fail(end, "';' between clauses or end of input")
            if self.peek().kind == "end":
                break
        if "MEM" not in values:
            raise self.fail(self.peek(), "a MEM[SOFT=..,HARD=..,VOL=..] clause", "MEM is required")
        return Profile(mem=values["MEM"], kv=values.get("KV"), tier=values.get("TIER", "LOCAL"),
                       priority=values.get("PRIORITY", 5), degrade=values.get("DEGRADE"))

    def _keyed(self, spec: dict, clause: str, close: str) -> dict:
        """key=value pairs in any order, each once, all of them required."""
        got: dict[str, object] = {}
        toks: dict[str, _Tok] = {}
        keys = "|".join(spec)
        while True:
            k = self.next()
            if k.kind != "name" or k.text not in spec:
                raise self.fail(k, f"a {clause} key ({keys})")
            if k.text in got:
                raise self.fail(k, f"each {clause} key once", f"{k.text} given twice")
            self.punct("=", f"'=' after {k.text}")
            toks[k.text] = self.peek()
            got[k.text] = spec[k.text]()
            sep = self.next()
            if sep.kind == "punct" and sep.text == close:
                break
            if sep.kind != "punct" or sep.text != ",":
                raise self.fail(sep, f"',' or '{close}'")
        missing = [k for k in spec if k not in got]
        if missing:
            raise self.fail(self.toks[self.i - 1], f"{clause} keys {', '.join(missing)}",
                            f"{clause} needs {keys.replace('|', ', ')}")
        return {"values": got, "toks": toks}

    def _mem(self) -> Mem:
        self.punct("[", "'[' after MEM")
        mb = lambda: self.integer("a size in MB (positive integer)", 1, MAX_MB)  # noqa: E731
        r = self._keyed({"SOFT": mb, "HARD": mb,
                         "VOL": lambda: self.word(VOLATILITIES, "LOW, MED or HIGH").text}, "MEM", "]")
        v = r["values"]
        if v["HARD"] < v["SOFT"]:
            raise self.fail(r["toks"]["HARD"], f"HARD >= SOFT ({v['SOFT']})",
                            "the hard cap cannot be below the soft cap")
        return Mem(soft_mb=v["SOFT"], hard_mb=v["HARD"], volatility=v["VOL"])

    def _kv(self) -> KV:
        self.punct("[", "'[' after KV")
        r = self._keyed({"CAP": lambda: self.fraction("a fraction 0 < CAP <= 1"),
                         "POLICY": lambda: self.word(POLICIES, "LRU, WINDOW or TASK_BOUND").text,
                         "PURGE": lambda: self.word(PURGES, "ON_STRESS, ON_EVENT or ON_STRESS_OR_EVENT").text},
                        "KV", "]")
        v = r["values"]
        return KV(cap_fraction=v["CAP"], policy=v["POLICY"], purge=v["PURGE"])

    def _tier(self) -> str:
        self.punct("=", "'=' after TIER")
        return self.word(TIERS, "LOCAL, EXTENDED or COLD").text

    def _priority(self) -> int:
        self.punct("=", "'=' after PRIORITY")
        return self.integer("a priority 0-9", 0, 9)

    def _degrade(self) -> tuple[Step, ...]:
        self.punct("{", "'{' after DEGRADE")
        steps: list[Step] = []
        where: dict[int, _Tok] = {}
        while True:
            t = self.next()
            m = re.fullmatch(r"STEP([0-9]{1,9})", t.text) if t.kind == "name" else None
            if m is None:
                raise self.fail(t, "a step STEP<n>:ACTION(arg)")
            order = int(m.group(1))
            if not 1 <= order <= MAX_STEP:
                raise self.fail(t, f"a step number 1..{MAX_STEP}")
            if order in where:
                first = _line_col(self.text, where[order].pos)
                raise self.fail(t, "unique step numbers",
                                f"STEP{order} already given at line {first[0]}, column {first[1]}")
            where[order] = t
            self.punct(":", f"':' after STEP{order}")
            steps.append(Step(order, *self._action()))
            sep = self.next()
            if sep.kind == "punct" and sep.text == "}":
                break
            if sep.kind != "punct" or sep.text != ",":
                raise self.fail(sep, "',' or '}'")
        return tuple(sorted(steps, key=lambda s: s.order))

    def _action(self) -> tuple[str, object]:
        a = self.word(ACTIONS, "an action (" + ", ".join(ACTIONS) + ")").text
        self.punct("(", f"'(' after {a}")
        arg: object
        if a == "SHRINK_KV":
            arg = self.fraction("a fraction 0 < f <= 1")
        elif a == "CONTEXT":
            arg = self.integer("a positive number of tokens", 1, MAX_CONTEXT)
        elif a == "OFFLOAD":
            arg = self.word(TIERS, "a tier (LOCAL, EXTENDED or COLD)").text
        else:
            t = self.next()
            if t.kind != "name":
                raise self.fail(t, "a name (letters, digits, _)")
            arg = t.text
        self.punct(")", f"')' after the {a} argument")
        return a, arg


def parse(text: str) -> Profile:
    """Rune text → Profile; raises ParseError (line, column, expected, found)."""
    if not isinstance(text, str):
        raise ParseError(f"rune text must be a string, got {type(text).__name__}",
                         expected="a string", found=type(text).__name__)
    return _Parser(text).profile()


# ---------------------------------------------------------------- formatter

def _num(x: float) -> str:
    """Shortest text that reads back as x, never in exponent form."""
    s = repr(float(x))
    if "e" in s or "E" in s:
        s = format(decimal.Decimal(s), "f")
    return s


def _arg_text(action: str, arg) -> str:
    return _num(arg) if action == "SHRINK_KV" else str(arg)


def format_profile(p: Profile) -> str:
    """The canonical rune text of a profile (what the built-ins are written in)."""
    parts = [f"MEM[SOFT={p.mem.soft_mb},HARD={p.mem.hard_mb},VOL={p.mem.volatility}]"]
    if p.kv is not None:
        parts.append(f"KV[CAP={_num(p.kv.cap_fraction)},POLICY={p.kv.policy},PURGE={p.kv.purge}]")
    parts.append(f"TIER={p.tier}")
    parts.append(f"PRIORITY={p.priority}")
    if p.degrade:
        parts.append("DEGRADE{" + ",".join(f"STEP{s.order}:{s.action}({_arg_text(s.action, s.arg)})"
                                           for s in p.degrade) + "}")
    return "; ".join(parts)


# ----------------------------------------------------------------- profiles

_BUILTIN_TEXT = {
    "MINIMAL": "MEM[SOFT=512,HARD=1024,VOL=LOW]; TIER=LOCAL; PRIORITY=3",
    "BALANCED": ("MEM[SOFT=2048,HARD=4096,VOL=MED]; KV[CAP=0.2,POLICY=WINDOW,PURGE=ON_STRESS]; "
                 "TIER=EXTENDED; PRIORITY=5; "
                 "DEGRADE{STEP1:SHRINK_KV(0.75),STEP2:CONTEXT(4096),STEP3:DISABLE(HIGH_COST_METRICS)}"),
    "PERFORMANCE": ("MEM[SOFT=4096,HARD=8192,VOL=HIGH]; KV[CAP=0.3,POLICY=TASK_BOUND,PURGE=ON_EVENT]; "
                    "TIER=LOCAL; PRIORITY=8; DEGRADE{STEP1:SHRINK_KV(0.9),STEP2:DISABLE(TELEMETRY)}"),
}
PROFILES: dict[str, Profile] = {name: parse(text) for name, text in _BUILTIN_TEXT.items()}


def resolve(arg: str) -> tuple[str | None, Profile]:
    """A profile argument: a built-in name (any case) or rune text.
    Returns (name or None, profile)."""
    if isinstance(arg, str) and arg.strip().upper() in PROFILES:
        name = arg.strip().upper()
        return name, PROFILES[name]
    return None, parse(arg)


# --------------------------------------------------------------------- JSON

def to_json(p: Profile) -> dict:
    """The seed's JSON shape of a profile."""
    return {
        "mem": {"soft_cap_mb": p.mem.soft_mb, "hard_cap_mb": p.mem.hard_mb,
                "volatility": p.mem.volatility},
        "kv": None if p.kv is None else {
            "cap_fraction": p.kv.cap_fraction, "policy": p.kv.policy,
            "purge_on_stress": p.kv.purge_on_stress, "purge_on_event": p.kv.purge_on_event},
        "tier": p.tier,
        "priority": p.priority,
        "degrade": None if not p.degrade else {
            "steps": [step_json(s) for s in p.degrade]},
    }


def step_json(s: Step) -> dict:
    """The seed's JSON shape of one DEGRADE step (also a directive's steps)."""
    return {"order": s.order, "action": s.action, "args": [s.arg]}


def _purge_name(on_stress: bool, on_event: bool) -> str:
    if on_stress and on_event:
        return "ON_STRESS_OR_EVENT"
    if on_stress:
        return "ON_STRESS"
    if on_event:
        return "ON_EVENT"
    raise ValueError("kv: purge_on_stress and purge_on_event cannot both be false")


def from_json(obj: dict) -> Profile:
    """The seed's JSON shape → Profile, validated by the same rules as the
    text (it is rendered to rune text and parsed).  Raises ValueError naming
    the field for a wrong shape, ParseError for a wrong value."""
    try:
        mem = obj["mem"]
        text = [f"MEM[SOFT={int(mem['soft_cap_mb'])},HARD={int(mem['hard_cap_mb'])},"
                f"VOL={mem['volatility']}]"]
        kv = obj.get("kv")
        if kv is not None:
            text.append(f"KV[CAP={_num(kv['cap_fraction'])},POLICY={kv['policy']},"
                        f"PURGE={_purge_name(bool(kv['purge_on_stress']), bool(kv['purge_on_event']))}]")
        text.append(f"TIER={obj.get('tier', 'LOCAL')}")
        text.append(f"PRIORITY={int(obj.get('priority', 5))}")
        deg = obj.get("degrade")
        if deg and deg.get("steps"):
            steps = []
            for s in deg["steps"]:
                if len(s["args"]) != 1:
                    raise ValueError(f"degrade step {s.get('order')}: args must hold exactly one value")
                (arg,) = s["args"]
                steps.append(f"STEP{int(s['order'])}:{s['action']}({_arg_text(s['action'], arg)})")
            text.append("DEGRADE{" + ",".join(steps) + "}")
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"profile JSON is missing or has a wrong field: {exc}") from None
    return parse("; ".join(text))
