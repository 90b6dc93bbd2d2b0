"""pydantic's ValidationError as the user of params.yaml needs it: per problem the dotted key, the
bad value, what is allowed, and "did you mean" for a typo."""
from __future__ import annotations

import difflib
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Sequence, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

OPS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _walk(cls: type, loc: tuple) -> tuple[str, Any, type | None, str | None]:
    """loc -> (dotted key, the annotation there, the model holding the last key, the scheduler
    name passed on the way: pydantic puts a tagged union's tag in loc)."""
    keys: list[str] = []
    ann, owner, tag = cls, None, None
    for part in loc:
        while get_origin(ann) is Annotated:  # a dict's or list's item type keeps its Field() here
            ann = get_args(ann)[0]
        if get_origin(ann) in (Union, UnionType):
            members = [m for m in get_args(ann) if m is not NoneType]
            if len(members) > 1:
                ann, tag = next(m for m in members if part in _options(m)), part
                continue
            ann = members[0]
        if isinstance(part, int):  # a list item: the list's key names it
            ann = get_args(ann)[0]
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            owner, field = ann, ann.model_fields.get(part)
            keys.append(part)
            ann = field and field.annotation
        else:  # a name under preprocess.variants
            keys.append(str(part))
            ann = get_args(ann)[1]
    return ".".join(keys), ann, owner, tag


def _options(ann: Any) -> list[str]:
    """The values a Literal allows (also inside tuple[...], or a tagged section's name or type)."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return _options(next(ann.model_fields[k].annotation for k in ("name", "type") if k in ann.model_fields))
    if get_origin(ann) is Literal:
        return [str(a) for a in get_args(ann)]
    return [o for a in get_args(ann) for o in _options(a)]


def _hint(value: Any, options: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(str(value), list(options), n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def _message(cls: type, error: dict) -> str:
    kind, loc, value, ctx = error["type"], error["loc"], error.get("input"), error.get("ctx", {})
    key, ann, owner, tag = _walk(cls, loc)
    parent, _, last = key.rpartition(".")
    if kind == "extra_forbidden":
        allowed = [f for f in (owner.model_fields if owner else []) if not (tag and f == "name")]
        if tag:
            return f"{key} does not apply to scheduler {tag!r} (it takes: {', '.join(allowed) or 'no settings'})"
        return f"unknown key {key!r}{_hint(last, allowed, parent + '.' if parent else '')} " \
               f"(allowed here: {', '.join(allowed)})"
    if kind in ("literal_error", "union_tag_invalid", "union_tag_not_found"):
        names = _options(ann)
        tag_key = str(ctx.get("discriminator", "name")).strip("'")
        if kind == "union_tag_not_found":
            return f"{key}.{tag_key} is missing; allowed: {', '.join(names)}"
        key, value = (f"{key}.{tag_key}", ctx["tag"]) if kind == "union_tag_invalid" else (key, value)
        return f"{key}: unknown value {value!r}{_hint(value, names)} (allowed: {', '.join(names)})"
    if kind == "value_error":  # our validators' own words
        return f"{key}: {ctx['error']}" if key else str(ctx["error"])
    if kind == "missing":
        return f"missing key {key!r}"
    if kind in ("model_type", "dict_type"):
        return f"{key or 'params.yaml'}: expected a mapping of keys, got {value!r}"
    field = owner.model_fields.get(last) if owner else None
    bounds = " and ".join(f"{op} {getattr(m, k)}" for m in (field.metadata if field else [])
                          for k, op in OPS.items() if hasattr(m, k))
    bounds = bounds or " and ".join(f"{OPS[k]} {v}" for k, v in ctx.items() if k in OPS)  # a list item's
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"):
        return f"{key}: {float(value) if ann is float else value} is out of range; it must be {bounds}"
    must = {"bool": "true or false", "string": "text", "int": f"an integer {bounds}", "float": f"a number {bounds}",
            "too": "a non-empty list", "tuple": "a list", "list": "a list"}.get(kind.split("_")[0])
    return f"{key}: {value!r} must be {must}".rstrip() if must else f"{key}: {value!r}: {error['msg']}"


def explain(cls: type[BaseModel], exc: ValidationError) -> str:
    """One line per problem, each once."""
    errors = exc.errors(include_url=False)
    # A typo also makes its key missing: where keys are unknown, name those alone.
    errors = [e for e in errors if e["type"] == "extra_forbidden"] or errors
    return "\n".join(dict.fromkeys(_message(cls, e) for e in errors))
