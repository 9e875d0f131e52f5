"""The validation rules every entry point shares: the DAG's Param schema, `validate_params`, the
training plan, the Job renderer and the validators inside the trainer and evaluator images.

One `Rule` per field: the same object checks a value (raising InputError that names the field
and the accepted range) and describes itself as a JSON-schema fragment for an Airflow Param, so
the form and the code cannot disagree. Plain Python: the images import it and have no Airflow.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from include.errors import InputError

URI_SCHEMES = ("file", "s3")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
# The schema key holding a field's rule in words. Not JSON Schema's `description`: Airflow rebuilds a
# Param from its schema as keyword arguments, where `description` is the Param's own argument. An
# unknown keyword is an annotation to JSON Schema (like Airflow's own `section`), and the API quotes
# the failing schema, words included, when it refuses a value.
RULE_KEY = "rule"
DATASET_VERSION_RE = re.compile(r"[0-9a-f]{16}")  # catalog versions: 16 hex digits of a content hash


def uri_problem(value: Any) -> str | None:
    """Why `value` is not an acceptable storage URI (file:// or s3://, absolute, no control
    characters, no '..' segments), or None when it is."""
    if not isinstance(value, str):
        return "expected a URI string"
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in URI_SCHEMES or not rest.strip("/"):
        return f"expected a URI with scheme {' or '.join(URI_SCHEMES)}://"
    if scheme == "file" and not rest.startswith("/"):
        return "a file:// URI needs an absolute path (file:///...)"
    if CONTROL_RE.search(value):
        return "control characters are not allowed"
    if ".." in rest.split("/"):
        return "'..' path segments are not allowed"
    return None


def is_dataset_version(value: Any) -> bool:
    return isinstance(value, str) and DATASET_VERSION_RE.fullmatch(value) is not None


@dataclass(frozen=True)
class Rule:
    """One field's accepted values: an integer or number range (either bound may be open or absent), or
    an enumeration. `error` is the exception a refusal raises: a stage with its own error type (a policy
    file, a settings variable) keeps it, and the message is the same everywhere."""

    field: str
    kind: str  # "integer" | "number" | "enum"
    low: float | None = None
    high: float | None = None
    choices: Sequence[Any] = ()
    open_low: bool = False  # low itself is refused (learning_rate > 0)
    open_high: bool = False  # high itself is refused (confidence < 1)
    error: type[Exception] = InputError

    def accepted(self) -> str:
        if self.kind == "enum":
            return "one of " + ", ".join(repr(c) if isinstance(c, str) else str(c) for c in self.choices)
        what = "an integer" if self.kind == "integer" else "a number"
        if self.high is None:
            return what if self.low is None else f"{what} with value {'>' if self.open_low else '>='} {self.low}"
        high = f"{'<' if self.open_high else '<='} {self.high}"
        if self.low is None:
            return f"{what} with value {high}"
        return f"{what} with {self.low} {'<' if self.open_low else '<='} value {high}"

    def words(self) -> str:
        """The rule as a sentence for a person (a form field's description, a refused value's hint)."""
        if self.kind == "enum":
            return "One of: " + ", ".join(str(c) for c in self.choices) + "."
        what = "A whole number" if self.kind == "integer" else "A number"
        if self.low is not None and self.high is not None and not self.open_low and not self.open_high:
            return f"{what} from {num_words(self.low)} to {num_words(self.high)}."
        parts = []
        if self.low is not None:
            parts.append(f"above {num_words(self.low)}" if self.open_low else f"at least {num_words(self.low)}")
        if self.high is not None:
            parts.append(f"below {num_words(self.high)}" if self.open_high else f"at most {num_words(self.high)}")
        return f"{what} {' and '.join(parts)}." if parts else f"{what}."

    def check(self, value: Any, label: str | None = None) -> Any:
        """`value` if it is accepted, else `error` naming the field (or `label`) and what it accepts."""
        ok = True
        if isinstance(value, bool):  # an int subclass; `true` is never a count or a size
            ok = False
        elif self.kind == "enum":
            ok = any(value == c and type(value) is type(c) for c in self.choices)
        else:
            ok = (isinstance(value, int) if self.kind == "integer"
                  else isinstance(value, int | float) and math.isfinite(value))
            if ok and self.low is not None:
                ok = value > self.low if self.open_low else value >= self.low
            if ok and self.high is not None:
                ok = value < self.high if self.open_high else value <= self.high
        if not ok:
            raise self.error(f"{label or self.field}={value!r}: expected {self.accepted()}")
        return float(value) if self.kind == "number" else value

    def schema(self) -> dict[str, Any]:
        """The JSON-schema fragment an Airflow Param takes for this rule (bounds kept where the form's
        number input does not clamp them: `unclamped`)."""
        if self.kind == "enum":
            return {"enum": list(self.choices), RULE_KEY: self.words()}
        out: dict[str, Any] = {"type": self.kind}
        if self.high is not None:
            out["exclusiveMaximum" if self.open_high else "maximum"] = self.high
        if self.low is not None:
            out["exclusiveMinimum" if self.open_low else "minimum"] = self.low
        out[RULE_KEY] = self.words()  # in the schema: a refused value's error quotes it
        return unclamped(out)


BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def unclamped(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with a number's bounds moved into `allOf` (in place; idempotent).

    Airflow's trigger form maps a number field's top-level `minimum`/`maximum` onto its number
    input's min/max, which silently clamp a typed value when the field loses focus: 0 nodes became 1
    and the run started. Under `allOf` the rule is the same JSON Schema, the form leaves the value as
    typed, and the API refuses it (HTTP 400, "0 is less than the minimum of 1" and the rule's words),
    which the form shows; no run is created.
    """
    bounds = {key: schema.pop(key) for key in BOUND_KEYS if key in schema}
    if bounds:
        if RULE_KEY in schema:
            bounds[RULE_KEY] = schema[RULE_KEY]  # the refusal quotes this sub-schema: keep the words in it
        schema["allOf"] = [*schema.get("allOf", []), bounds]
    return schema


def schema_bounds(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A number schema's bounds, top-level or under `allOf` (`unclamped`)."""
    out = {key: schema[key] for key in BOUND_KEYS if key in schema}
    for sub in schema.get("allOf", ()):
        out.update({key: sub[key] for key in BOUND_KEYS if key in sub})
    return out


def num_words(x: Any) -> str:
    """A bound as a person writes it: 1,000,000 for a count, 0.95 or 1e-05 for a number."""
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else f"{x:g}"


def schema_words(schema: Mapping[str, Any]) -> str | None:
    """A JSON-schema fragment's enum or numeric range in words; None for what words cannot be derived
    from (a pattern's words are given by hand, `with_words`)."""
    if schema.get(RULE_KEY):
        return schema[RULE_KEY]
    if "enum" in schema:
        return "One of: " + ", ".join(str(c) for c in schema["enum"]) + "."
    bounds = schema_bounds(schema)
    low, high = bounds.get("minimum"), bounds.get("maximum")
    above = bounds.get("exclusiveMinimum")
    if low is None and high is None and above is None:
        return None
    what = "A whole number" if "integer" in (schema.get("type") or ()) else "A number"
    parts = []
    if above is not None:
        parts.append(f"above {num_words(above)}")
    if low is not None and high is not None:
        return f"{what} from {num_words(low)} to {num_words(high)}."
    if low is not None:
        parts.append(f"at least {num_words(low)}")
    if high is not None:
        parts.append(f"at most {num_words(high)}")
    return f"{what} {' and '.join(parts)}."


def with_words(param: Any, words: str) -> Any:
    """Set a Param's rule in words by hand (a pattern's words cannot be derived from the regex)."""
    param.schema[RULE_KEY] = words
    return param


def form_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
    """Every trigger-form Param with its rule in words and its bounds where the form does not clamp
    them (`unclamped`); duck-typed `.schema`/`.description`: no Airflow here.

    The words end the field's description (the form shows it under the field) and stand in the
    schema under RULE_KEY, which the API quotes when it refuses a value: a person reads
    "One of: lora, full." or "16 lowercase hex digits", not only a regex.
    """
    for param in params.values():
        words = schema_words(param.schema)
        if words:
            param.schema[RULE_KEY] = words
            if words not in (param.description or ""):
                param.description = f"{param.description} {words}".strip() if param.description else words
        unclamped(param.schema)
    return params


def check_all(rules: Mapping[str, Rule], values: Mapping[str, Any], *, required: bool = True) -> dict[str, Any]:
    """Every rule applied to `values` (a missing key is an error when `required`)."""
    if not isinstance(values, Mapping):
        raise InputError(f"expected an object of fields, got {type(values).__name__}")
    out = {}
    for key, rule in rules.items():
        if key not in values:
            if required:
                raise InputError(f"{key}: required; expected {rule.accepted()}")
            continue
        out[key] = rule.check(values[key])
    return out


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` merged into a copy of `base`: dicts recurse, anything else replaces; None deletes."""
    out = copy.deepcopy(dict(base))
    for key, value in over.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
