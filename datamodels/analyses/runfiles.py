"""Checks of the files a run keeps beside its store: the kept results of the analyses
(``RUN/analyses/*.json``) and the sweep's checkpoint records (the datamodels' .npz is checked
by ``datamodels.artifacts``).

Each check looks at structure and types before anything uses the values, and names the file
and the problem in a one-line ``DatamodelsError``: a damaged, hand-edited or foreign file is
never a traceback deep inside a plot.
"""
from __future__ import annotations

import math
from typing import Any, List

from ..errors import DatamodelsError

FINITE = "finite"  # a number that must be finite (float alone allows NaN, as json writes it)


class MapOf:
    """An object whose keys are free and whose values all follow ``schema``."""

    def __init__(self, schema):
        self.schema = schema


class _Bad(Exception):
    pass


def _describe(schema) -> str:
    if schema is int:
        return "a whole number"
    if schema is float:
        return "a number"
    if schema == FINITE:
        return "a finite number"
    if schema is str:
        return "a string"
    if schema is None:
        return "null"
    if isinstance(schema, tuple):
        return " or ".join(_describe(s) for s in schema)
    if isinstance(schema, list):
        return "a list"
    return "an object"


def _shown(value) -> str:
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _matches(value, schema) -> bool:
    if schema is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if schema is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if schema == FINITE:
        return _matches(value, float) and math.isfinite(value)
    if schema is None:
        return value is None
    if schema is str:
        return isinstance(value, str)
    if isinstance(schema, list):
        return isinstance(value, list)
    return isinstance(value, dict)  # MapOf or {key: schema}


def check(value, schema, where: str = "") -> None:
    """Raise ``_Bad`` naming the first place where ``value`` departs from ``schema``: a type
    (int, float, FINITE, str, None), a tuple of alternatives, ``[item schema]``, ``MapOf``, or
    ``{key: schema}`` (a key ending in ``?`` may be missing; other keys are ignored)."""
    alternatives = schema if isinstance(schema, tuple) else (schema,)
    matching = [s for s in alternatives if _matches(value, s)]
    if not matching:
        raise _Bad(f"{where or 'the file'} should be {_describe(schema)}, got {_shown(value)}")
    schema = matching[0]
    if isinstance(schema, list):
        for i, item in enumerate(value):
            check(item, schema[0], f"{where}[{i}]")
    elif isinstance(schema, MapOf):
        for key, item in value.items():
            check(item, schema.schema, f"{where}.{key}" if where else str(key))
    elif isinstance(schema, dict):
        for key, sub in schema.items():
            optional = key.endswith("?")
            key = key.rstrip("?")
            name = f"{where}.{key}" if where else key
            if key not in value:
                if optional:
                    continue
                raise _Bad(f"{name} is missing")
            check(value[key], sub, name)


def checked(value, schema, path) -> Any:
    """``value`` when it follows ``schema``; otherwise a DatamodelsError naming ``path``."""
    try:
        check(value, schema)
    except _Bad as exc:
        raise DatamodelsError(f"{path}: {exc}") from None
    return value


# ---- RUN/analyses/*.json ------------------------------------------------------------------------

_CORRELATION = {"pearson?": float, "spearman?": float, "n?": int}
_SUMMARY = {"n": int, "pearson": float, "pearson_ci": [float], "weighted_pearson": float,
            "weighted_pearson_ci": [float], "pearson_judged": float, "pearson_judged_ci": [float],
            "judged": int, "noisy": [int], "noisy_limit": float, "models_to_settle?": MapOf(int)}
RESULT_SCHEMAS = {
    "counterfactual": {
        "fingerprint": str, "base": str, "verify": int,
        "counterfactuals": [{"target": int, "remove": str, "predicted_change": FINITE,
                             "verified?": {"models": int, "predicted_change": FINITE, "actual_change": FINITE,
                                           "actual_change_se": float}}],
        "correlation?": _CORRELATION, "by_spec?": MapOf(_CORRELATION), "summary?": _SUMMARY},
    "brittleness": {
        "fingerprint": str, "num_targets": int, "max_support": int,
        "counts": {"already_wrong": int, "flippable": int, "never_flips": int},
        "targets": [{"target": int, "support_size": (int, None), "predicted_before": float,
                     "predicted_after": float, "verified?": {"actual_after": float, "actual_after_se?": float,
                                                             "verdict?": str}}],
        "verified?": {"models": int, "checked": int, "flipped": int, "share": float, "share_ci?": [float],
                      "undecided?": int, "models_to_settle?": (int, None)}},
    "learning_curve": {
        "fingerprint": str, "num_targets": int,
        "points": [{"num_models": int, "lds": float, "quantiles?": MapOf(float)}]},
}


def check_result(result, name: str, path) -> dict:
    """A kept analysis result (``counterfactual``, ``brittleness``, ``learning_curve``) checked
    against what the report reads from it."""
    checked(result, RESULT_SCHEMAS[name], path)
    if name == "counterfactual" and result["base"] not in ("subset", "full"):
        raise DatamodelsError(f"{path}: base should be subset or full, got {_shown(result['base'])}")
    if name == "brittleness":
        key = f"at_most_{result['max_support']}"
        checked(result["counts"], {key: int}, f"{path}: counts")
        if any(r["support_size"] is not None and r["support_size"] < 0 for r in result["targets"]):
            raise DatamodelsError(f"{path}: targets[].support_size should be at least 0 (or null)")
    if name == "learning_curve":
        if not result["points"]:
            raise DatamodelsError(f"{path}: points is empty")
        if any(p["num_models"] < 1 for p in result["points"]):
            raise DatamodelsError(f"{path}: points[].num_models should be at least 1")
    return result


# ---- checkpoint records -----------------------------------------------------------------------

# What the report reads beyond the fields ``datamodels.live.read_log`` checks.
CHECKPOINT_SCHEMA = {"num_fit_models": int, "num_targets": int, "time": float, "per_target": [(float, None)]}


def check_checkpoints(records: List, path) -> List[dict]:
    """Records of a store's checkpoint log (as ``read_log`` returns them) checked for what the
    report and the forecast read: each an object with ``num_targets``, ``time`` and ``per_target``,
    at least 1 fitting model, and one length of ``per_target`` per setting."""
    lengths = {}
    for number, record in enumerate(records, 1):
        where = f"{path}: record {number}"
        if not isinstance(record, dict):
            raise DatamodelsError(f"{where} should be a JSON object, got {_shown(record)}")
        checked(record, CHECKPOINT_SCHEMA, where)
        if record["num_fit_models"] < 1:
            raise DatamodelsError(f"{where}: num_fit_models should be at least 1, got {record['num_fit_models']}")
        size = lengths.setdefault(record.get("settings_key"), len(record["per_target"]))
        if len(record["per_target"]) != size:
            raise DatamodelsError(f"{where}: per_target has {len(record['per_target'])} values, earlier records of "
                                  f"the same settings {size}")
    return records
