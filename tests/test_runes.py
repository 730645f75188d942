"""Memory runes: grammar, validation with positions, profiles, JSON, round trips."""
import pytest
from hypothesis import given, settings, strategies as st

from aal_core import runes
from aal_core.errors import ParseError
from aal_core.runes import KV, Mem, Profile, Step

MEM = "MEM[SOFT=10,HARD=50,VOL=LOW]"


def test_builtin_profiles_are_the_documented_ones():
    assert set(runes.PROFILES) == {"MINIMAL", "BALANCED", "PERFORMANCE"}
    assert runes.PROFILES["MINIMAL"] == Profile(mem=Mem(512, 1024, "LOW"), tier="LOCAL", priority=3)
    assert runes.PROFILES["BALANCED"] == Profile(
        mem=Mem(2048, 4096, "MED"), kv=KV(0.2, "WINDOW", "ON_STRESS"), tier="EXTENDED", priority=5,
        degrade=(Step(1, "SHRINK_KV", 0.75), Step(2, "CONTEXT", 4096), Step(3, "DISABLE", "HIGH_COST_METRICS")))
    assert runes.PROFILES["PERFORMANCE"] == Profile(
        mem=Mem(4096, 8192, "HIGH"), kv=KV(0.3, "TASK_BOUND", "ON_EVENT"), tier="LOCAL", priority=8,
        degrade=(Step(1, "SHRINK_KV", 0.9), Step(2, "DISABLE", "TELEMETRY")))
    # and their canonical text is exactly the documented text
    assert runes.format_profile(runes.PROFILES["MINIMAL"]) == "MEM[SOFT=512,HARD=1024,VOL=LOW]; TIER=LOCAL; PRIORITY=3"
    assert runes.format_profile(runes.PROFILES["PERFORMANCE"]) == (
        "MEM[SOFT=4096,HARD=8192,VOL=HIGH]; KV[CAP=0.3,POLICY=TASK_BOUND,PURGE=ON_EVENT]; "
        "TIER=LOCAL; PRIORITY=8; DEGRADE{STEP1:SHRINK_KV(0.9),STEP2:DISABLE(TELEMETRY)}")


def test_defaults_whitespace_newlines_and_any_clause_order():
    p = runes.parse(" \n MEM [ VOL = HIGH ,\n SOFT=1 , HARD = 1 ] ;\n")
    assert p == Profile(mem=Mem(1, 1, "HIGH"), kv=None, tier="LOCAL", priority=5, degrade=None)
    q = runes.parse("PRIORITY=0;DEGRADE{STEP2:OFFLOAD(COLD),STEP1:BATCH(ASYNC)};\tTIER=COLD;" + MEM)
    assert q.priority == 0 and q.tier == "COLD"
    assert q.degrade == (Step(1, "BATCH", "ASYNC"), Step(2, "OFFLOAD", "COLD"))   # sorted by order


def test_purge_maps_to_the_seed_flags():
    for purge, flags in (("ON_STRESS", (True, False)), ("ON_EVENT", (False, True)),
                         ("ON_STRESS_OR_EVENT", (True, True))):
        kv = runes.parse(f"{MEM}; KV[CAP=1,POLICY=LRU,PURGE={purge}]").kv
        assert (kv.purge_on_stress, kv.purge_on_event) == flags


@pytest.mark.parametrize("text, line, column, expected, found", [
    ("", 1, 1, "a clause", "end of input"),
    ("TIER=LOCAL", 1, 11, "MEM", "end of input"),
    ("MEM[SOFT=0,HARD=1,VOL=LOW]", 1, 10, "positive integer", "0"),
    ("MEM[SOFT=10,HARD=5,VOL=LOW]", 1, 18, "HARD >= SOFT", "5"),
    ("MEM[SOFT=10,HARD=50]", 1, 20, "VOL", "]"),
    ("MEM[SOFT=10,SOFT=20,HARD=50,VOL=LOW]", 1, 13, "once", "SOFT"),
    ("MEM[SOFT=10,HARD=50,VOL=HUGE]", 1, 25, "LOW, MED or HIGH", "HUGE"),
    (MEM + ";\n  TIER=HOT", 2, 8, "LOCAL, EXTENDED or COLD", "HOT"),
    (MEM + "; " + MEM, 1, 31, "at most once", "MEM"),
    (MEM + "; PRIORITY=3; PRIORITY=4", 1, 43, "at most once", "PRIORITY"),
    (MEM + "; FOO=1", 1, 31, "a clause", "FOO"),
    (MEM + " PRIORITY=3", 1, 30, "';'", "PRIORITY"),
    (MEM + "; PRIORITY=12", 1, 40, "0-9", "12"),
    (MEM + "; PRIORITY=-1", 1, 40, "0-9", "-"),
    (MEM + "; KV[CAP=0,POLICY=LRU,PURGE=ON_EVENT]", 1, 38, "0 < CAP <= 1", "0"),
    (MEM + "; KV[CAP=1.01,POLICY=LRU,PURGE=ON_EVENT]", 1, 38, "0 < CAP <= 1", "1.01"),
    (MEM + "; KV[CAP=0.5,POLICY=FIFO,PURGE=ON_EVENT]", 1, 49, "LRU, WINDOW or TASK_BOUND", "FIFO"),
    (MEM + "; KV[CAP=0.5,POLICY=LRU]", 1, 52, "PURGE", "]"),
    (MEM + "; DEGRADE{STEP1:SHRINK_KV(1.5)}", 1, 55, "0 < f <= 1", "1.5"),
    (MEM + "; DEGRADE{STEP1:SHRINK_KV(0)}", 1, 55, "0 < f <= 1", "0"),
    (MEM + "; DEGRADE{STEP1:CONTEXT(0.5)}", 1, 53, "positive number of tokens", "0.5"),
    (MEM + "; DEGRADE{STEP1:CONTEXT(0)}", 1, 53, "positive number of tokens", "0"),
    (MEM + "; DEGRADE{STEP1:OFFLOAD(MOON)}", 1, 53, "a tier", "MOON"),
    (MEM + "; DEGRADE{STEP1:DISABLE(7)}", 1, 53, "a name", "7"),
    (MEM + "; DEGRADE{STEP1:EXPLODE(1)}", 1, 45, "an action", "EXPLODE"),
    (MEM + "; DEGRADE{STEP1:BATCH(A),\n STEP1:BATCH(B)}", 2, 2, "unique step numbers", "STEP1"),
    (MEM + "; DEGRADE{}", 1, 39, "STEP<n>", "}"),
    (MEM + "; DEGRADE{STEP0:BATCH(A)}", 1, 39, "step number", "STEP0"),
    (MEM + "; DEGRADE{STEP1:BATCH(A)", 1, 53, "',' or '}'", "end of input"),
    (MEM + "; €", 1, 31, "a clause", "€"),
    ("MEM[SOFT=" + "9" * 5000 + ",HARD=1,VOL=LOW]", 1, 10, "positive integer", "9" * 5000),
])
def test_errors_say_where_what_and_quote_the_text(text, line, column, expected, found):
    with pytest.raises(ParseError) as ei:
        runes.parse(text)
    e = ei.value
    assert (e.line, e.column) == (line, column), str(e)
    assert expected in e.expected
    assert e.found == found
    assert f"line {line}, column {column}" in str(e)
    quoted = found if found == "end of input" else repr(found if len(found) <= 40 else found[:37] + "...")
    assert f"found {quoted}" in str(e)
    assert e.to_data() == {"line": line, "column": column, "expected": e.expected, "found": found}


def test_resolve_takes_a_name_or_rune_text():
    assert runes.resolve("balanced") == ("BALANCED", runes.PROFILES["BALANCED"])
    assert runes.resolve(" MINIMAL ") == ("MINIMAL", runes.PROFILES["MINIMAL"])
    name, p = runes.resolve(MEM)
    assert name is None and p.mem == Mem(10, 50, "LOW")
    with pytest.raises(ParseError):
        runes.resolve("TURBO")


def test_json_uses_the_seed_names_and_converts_back():
    j = runes.to_json(runes.PROFILES["BALANCED"])
    assert j == {
        "mem": {"soft_cap_mb": 2048, "hard_cap_mb": 4096, "volatility": "MED"},
        "kv": {"cap_fraction": 0.2, "policy": "WINDOW", "purge_on_stress": True, "purge_on_event": False},
        "tier": "EXTENDED", "priority": 5,
        "degrade": {"steps": [{"order": 1, "action": "SHRINK_KV", "args": [0.75]},
                              {"order": 2, "action": "CONTEXT", "args": [4096]},
                              {"order": 3, "action": "DISABLE", "args": ["HIGH_COST_METRICS"]}]},
    }
    for p in runes.PROFILES.values():
        assert runes.from_json(runes.to_json(p)) == p
    assert runes.to_json(runes.PROFILES["MINIMAL"])["kv"] is None
    assert runes.to_json(runes.PROFILES["MINIMAL"])["degrade"] is None


def test_from_json_rejects_bad_shapes_clearly():
    good = runes.to_json(runes.PROFILES["BALANCED"])
    with pytest.raises(ValueError, match="mem"):
        runes.from_json({"tier": "LOCAL"})
    bad = dict(good, kv=dict(good["kv"], purge_on_stress=False, purge_on_event=False))
    with pytest.raises(ValueError, match="both be false"):
        runes.from_json(bad)
    bad = dict(good, priority=11)
    with pytest.raises(ParseError, match="0-9"):
        runes.from_json(bad)


def test_non_string_is_a_parse_error():
    with pytest.raises(ParseError, match="string"):
        runes.parse(42)


# ----------------------------------------------------------- property tests

_ws = st.sampled_from(["", " ", "\n", "\t", "  \n "])


@st.composite
def profiles(draw):
    soft = draw(st.integers(1, 1 << 20))
    mem = Mem(soft, draw(st.integers(soft, 1 << 21)), draw(st.sampled_from(runes.VOLATILITIES)))
    kv = draw(st.none() | st.builds(
        KV, st.floats(min_value=1e-6, max_value=1.0, allow_nan=False).filter(lambda x: x > 0),
        st.sampled_from(runes.POLICIES), st.sampled_from(runes.PURGES)))
    orders = draw(st.lists(st.integers(1, 50), unique=True, max_size=6))
    steps = []
    for o in sorted(orders):
        action = draw(st.sampled_from(runes.ACTIONS))
        arg = {"SHRINK_KV": st.floats(min_value=1e-9, max_value=1.0).filter(lambda x: x > 0),
               "CONTEXT": st.integers(1, 1 << 20),
               "DISABLE": st.from_regex(r"[A-Z_][A-Z0-9_]{0,12}", fullmatch=True),
               "BATCH": st.sampled_from(["ASYNC", "SYNC", "MICRO"]),
               "OFFLOAD": st.sampled_from(runes.TIERS)}[action]
        steps.append(Step(o, action, draw(arg)))
    return Profile(mem=mem, kv=kv, tier=draw(st.sampled_from(runes.TIERS)),
                   priority=draw(st.integers(0, 9)), degrade=tuple(steps) or None)


def _spread(text: str, draw) -> str:
    """Insert random whitespace around punctuation (always allowed there)."""
    out = []
    for ch in text:
        if ch in "[]{}();:,=":
            out.append(draw(_ws) + ch + draw(_ws))
        else:
            out.append(ch)
    return "".join(out)


@settings(max_examples=300, deadline=None)
@given(profiles(), st.data())
def test_format_parse_round_trip(p, data):
    text = runes.format_profile(p)
    assert runes.parse(text) == p
    assert runes.parse(_spread(text, data.draw)) == p
    assert runes.format_profile(runes.parse(text)) == text
    assert runes.from_json(runes.to_json(p)) == p


_alphabet = st.sampled_from(list("MEKVSOFTHARDLWIGPYC_0123456789.[]{}();:,= \n\t-€x"))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.text(_alphabet, max_size=80),
                 st.builds(lambda p, cut, junk: runes.format_profile(p)[:cut] + junk,
                           profiles(), st.integers(0, 200), st.text(_alphabet, max_size=5))))
def test_parser_only_ever_raises_its_own_error(text):
    try:
        p = runes.parse(text)
    except ParseError as e:
        assert e.line >= 1 and e.column >= 1 and e.expected
        return
    # whatever parsed is a valid profile that round-trips
    assert runes.parse(runes.format_profile(p)) == p
