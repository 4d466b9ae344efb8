"""The recipe's validation errors in words: one line per offending key, with the line it came from.

pydantic reports a union's failure once per member and names types as it knows them; a person wants to read
``recipe.yaml:8: optim.lr: expected a number or auto, got [1]``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

_TYPE_WORDS = {
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected a whole number",
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "dict_type": "expected a mapping of keys to values",
    "model_type": "expected a mapping of keys to values",
    "model_attributes_type": "expected a mapping of keys to values",
}


def suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    return f"valid keys: {', '.join(options)}"


_UNION_WORDS = {"bool": "true/false", "str": "a string", "int": "an integer", "float": "a number", "none": "null"}


def fmt(loc: str, key: str, msg: str) -> str:
    """``recipe.yaml:7: data.batchsize: msg``, or ``--set data.batchsize: msg`` for an override."""
    return f"--set {key}: {msg}" if loc == "--set" else f"{loc}: {key}: {msg}"


def describe(errs: list[dict[str, Any]], sections: dict[str, type[BaseModel]]) -> list[tuple[str, str]]:
    """(dotted key, message) per offending key; the errors pydantic gives per union member are merged."""
    by_key: dict[str, list[tuple[dict[str, Any], str | None]]] = {}
    for err in errs:
        loc = [str(p) for p in err["loc"]]
        member = None
        # pydantic appends the union member it tried ('bool', 'str', ...) to the location.
        if (loc and loc[-1] in _UNION_WORDS) or (
            loc and loc[-1].startswith(("function-", "list[", "literal[", "constrained-"))
        ):
            member = loc.pop()
        by_key.setdefault(".".join(loc), []).append((err, member))
    out = []
    for key, items in by_key.items():
        # A number of the right type that breaks its bounds (lr: 0, inf) is the problem, not the union's other member.
        bound = [e for e, m in items if (m or "").startswith("constrained-") and not e["type"].endswith(_TYPE_ERRORS)]
        if bound:
            out.append((key, _describe_one(key, bound[0], sections)))
            continue
        members = [_member_words(m) for _, m in items if m in _UNION_WORDS or (m or "").startswith(_MEMBERS)]
        err = items[0][0]
        if len(members) > 1:
            value = err.get("input")
            out.append((key, f"expected {' or '.join(members)}, got {value!r}"))
        else:
            out.append((key, _describe_one(key, err, sections)))
    return out


_MEMBERS = ("literal[", "constrained-")
_TYPE_ERRORS = ("_parsing", "_type")


def _member_words(member: str | None) -> str:
    """A union member in words: ``float`` -> a number, ``literal['auto']`` -> auto."""
    if member and member.startswith("constrained-"):
        return _UNION_WORDS.get(member.removeprefix("constrained-"), "a number")
    if member and member.startswith("literal["):
        return member.removeprefix("literal[").removesuffix("]").replace("'", "")
    return _UNION_WORDS.get(member or "", str(member))


def _describe_one(key: str, err: dict[str, Any], sections: dict[str, type[BaseModel]]) -> str:
    etype = err["type"]
    if etype == "extra_forbidden":
        section, _, leaf = key.rpartition(".")
        model = sections.get(section)
        options = list(model.model_fields) if model else []
        return f"unknown key; {suggest(leaf, options)}" if options else "unknown key"
    if etype == "missing":
        return "required key is missing; add it"
    value = err.get("input")
    got = f", got {value!r}" if not isinstance(value, dict | list) or len(repr(value)) < 60 else ""
    if etype in _TYPE_WORDS:
        return f"{_TYPE_WORDS[etype]}{got}"
    if etype == "literal_error":
        options = [
            o.strip().strip("'") for o in str(err.get("ctx", {}).get("expected", "")).replace(" or ", ",").split(",")
        ]
        options = [o for o in options if o]
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]}? " if close else ""
        return f"{value!r} is not one of {', '.join(options)}; {hint}".rstrip("; ").rstrip()
    msg = err["msg"].removeprefix("Value error, ")
    msg = msg[0].lower() + msg[1:] if msg else msg
    return msg if etype == "value_error" else f"{msg}{got}"
