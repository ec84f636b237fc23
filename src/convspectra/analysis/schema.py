"""The JSON schema of a spectral report, and its check with ``jsonschema``.

:data:`REPORT_SCHEMA` (JSON Schema draft 2020-12) describes :meth:`SpectralReport.to_dict`
output, ``schema_version`` 3. Version 3 added, per layer, ``sigma_max_model_status`` (exact
value or certified bracket only, and why) with ``sigma_max_model`` null when only the bracket
is known, and at the top ``complete`` / ``missing_layers`` (a partial report left by an
interrupted run) and ``layer_timeout`` / ``refine`` (how the own-padding norms were asked for).
Version 2 had no such fields; version 1 had no ``error`` per layer and no ``notes``.
:func:`validate_report` checks a parsed document with the ``jsonschema`` package (an optional
dependency, in the ``report`` extra) against the schema of its own ``schema_version``: 3, or 2
for files written by convspectra 0.x before version 3 (:data:`REPORT_SCHEMA_V2`). No torch needed.

Example:
    >>> import json, torch
    >>> from convspectra.analysis import REPORT_SCHEMA, spectral_report, validate_report
    >>> report = spectral_report(torch.nn.Conv2d(1, 2, 3, padding=1), (1, 8, 8))
    >>> validate_report(json.loads(report.to_json()))
    >>> REPORT_SCHEMA["properties"]["schema_version"]["const"]
    3
"""

from __future__ import annotations

import copy
from typing import Any

from ..errors import ParameterError

__all__ = ["REPORT_SCHEMA", "REPORT_SCHEMA_V2", "validate_report"]

_INT_LIST = {"type": "array", "items": {"type": "integer", "minimum": 0}}
_NUMBER_OR_NULL = {"type": ["number", "null"]}
_NONNEG_OR_NULL = {"type": ["number", "null"], "minimum": 0}

_LAYER: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "index": {"type": "integer", "minimum": 0, "description": "position in call order"},
        "name": {"type": "string", "description": "qualified module name; name#k for the k-th input size"},
        "type": {"type": "string", "description": "module class, e.g. Conv2d"},
        "kind": {"enum": ["conv", "linear"]},
        "kernel_shape": {**_INT_LIST, "description": "weight shape as PyTorch stores it"},
        "input_shape": {**_INT_LIST, "description": "spatial size of the layer's input ((in_features,) for linear)"},
        "output_shape": {**_INT_LIST, "description": "spatial size of the circular operator's output"},
        "stride": _INT_LIST,
        "dilation": _INT_LIST,
        "groups": {"type": "integer", "minimum": 1},
        "padding": {"type": "string", "description": "module padding, e.g. '1x1', 'same', 'none' for linear"},
        "padding_mode": {"type": "string", "description": "zeros, circular, reflect, replicate, none"},
        "transposed": {"type": "boolean"},
        "calls": {"type": "integer", "minimum": 1},
        "folded_batchnorm": {"type": ["string", "null"], "description": "BatchNorm folded into the layer"},
        "num_singular_values": {"type": ["integer", "null"], "minimum": 0},
        "sigma_max": {**_NONNEG_OR_NULL, "description": "operator norm, circular padding (exact)"},
        "sigma_min": _NONNEG_OR_NULL,
        "condition_number": {**_NONNEG_OR_NULL, "description": "sigma_max / sigma_min; null if sigma_min = 0"},
        "stable_rank": {**_NONNEG_OR_NULL, "description": "sum sigma^2 / sigma_max^2"},
        "effective_rank": {"type": ["integer", "null"], "minimum": 0},
        "sigma_max_model": {**_NONNEG_OR_NULL, "description": "operator norm with the module's own padding"},
        "sigma_max_model_lower": {**_NONNEG_OR_NULL, "description": "certified lower bound"},
        "sigma_max_model_upper": {**_NONNEG_OR_NULL, "description": "certified upper bound"},
        "sigma_max_model_status": {
            "enum": [
                "exact",
                "bracket (requested)",
                "bracket (time limit)",
                "bracket (max_iter)",
                "bracket (memory budget)",
                None,
            ],
            "description": "exact: sigma_max_model is the norm to rtol; bracket (why): only the certified bracket is "
            "known and sigma_max_model is null; null: no own-padding norm computed",
        },
        "seconds": {"type": "number", "minimum": 0},
        "note": {"type": ["string", "null"]},
        "error": {
            "type": ["string", "null"],
            "description": "why this layer's numbers are missing: the error of its computation (null: it ran); "
            "'own-padding norm: ...' when only the own-padding columns are missing",
        },
        "spectrum": {
            "type": ["array", "null"],
            "items": {"type": "number", "minimum": 0},
            "description": "all circular singular values, descending (with full_spectrum)",
        },
    },
}
#: The fields of one layer's record, in order (every one is required).
LAYER_FIELDS: tuple[str, ...] = tuple(_LAYER["properties"])
_LAYER["required"] = list(LAYER_FIELDS)

#: JSON Schema (draft 2020-12) of :meth:`convspectra.analysis.SpectralReport.to_dict`.
REPORT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://convspectra.invalid/schemas/spectral-report-3.json",
    "title": "convspectra spectral report",
    "type": "object",
    "additionalProperties": False,
    # a complete report misses no layer
    "if": {"properties": {"complete": {"const": True}}, "required": ["complete"]},
    "then": {"properties": {"missing_layers": {"maxItems": 0}}},
    "required": [
        "schema_version",
        "convspectra_version",
        "model",
        "input_shape",
        "padding",
        "fold_bn",
        "relative_threshold",
        "layer_timeout",
        "refine",
        "complete",
        "missing_layers",
        "seconds",
        "network_bound",
        "layers",
        "notes",
    ],
    "properties": {
        "schema_version": {"const": 3},
        "convspectra_version": {"type": "string"},
        "model": {"type": "string"},
        "input_shape": {**_INT_LIST, "description": "shape of the example input, batch axis first"},
        "padding": {"enum": ["circular", "model"]},
        "fold_bn": {"type": "boolean"},
        "relative_threshold": {"type": "number", "minimum": 0},
        "layer_timeout": {
            "type": ["number", "null"],
            "exclusiveMinimum": 0,
            "description": "seconds each layer's own-padding norm may take before its bracket is reported instead",
        },
        "refine": {"type": "boolean", "description": "false: only the certified bracket of each own-padding norm"},
        "complete": {"type": "boolean", "description": "false: a partial report (an interrupted or unfinished run)"},
        "missing_layers": {
            "type": "array",
            "items": {"type": "string"},
            "description": "the layers a partial report has not reached yet, in call order (empty when complete)",
        },
        "seconds": {"type": "number", "minimum": 0},
        "network_bound": {
            "type": "object",
            "additionalProperties": False,
            "required": ["value", "padding", "description", "rules"],
            "properties": {
                "value": {**_NONNEG_OR_NULL, "description": "UPPER bound on the Lipschitz constant, or null"},
                "padding": {"enum": ["circular", "model"]},
                "description": {"type": "string"},
                "rules": {
                    "type": "array",
                    "description": "the rule used at each node of the traced graph, in graph order",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["node", "op", "rule", "factor", "bound"],
                        "properties": {
                            "node": {"type": "string", "description": "torch.fx node name"},
                            "op": {"type": "string", "description": "module (name and type), function or method"},
                            "rule": {"type": "string", "description": "the rule, in words"},
                            "factor": {**_NONNEG_OR_NULL, "description": "Lipschitz constant of a one-input node"},
                            "bound": {**_NONNEG_OR_NULL, "description": "bound from the input to this node"},
                        },
                    },
                },
            },
        },
        "layers": {"type": "array", "items": _LAYER},
        "notes": {
            "type": "array",
            "items": {"type": "string"},
            "description": "what went wrong in the report as a whole, e.g. each layer whose computation failed",
        },
    },
}


#: The top-level fields and the layer fields version 3 added.
_ADDED_IN_3 = ("layer_timeout", "refine", "complete", "missing_layers")
_LAYER_ADDED_IN_3 = ("sigma_max_model_status",)


def _version_2() -> dict[str, Any]:
    """The schema of ``schema_version`` 2 files: version 3 without what it added (frozen as it was)."""
    schema = copy.deepcopy(REPORT_SCHEMA)
    schema["$id"] = "https://convspectra.invalid/schemas/spectral-report-2.json"
    properties = schema["properties"]
    properties["schema_version"] = {"const": 2}
    del schema["if"], schema["then"]
    for name in _ADDED_IN_3:
        del properties[name]
        schema["required"].remove(name)
    layer = properties["layers"]["items"]
    for name in _LAYER_ADDED_IN_3:
        del layer["properties"][name]
        layer["required"].remove(name)
    properties["network_bound"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["value", "padding", "description"],
        "properties": {
            "value": _NONNEG_OR_NULL,
            "padding": {"enum": ["circular", "model"]},
            "description": {"type": "string"},
        },
    }
    return schema


#: JSON Schema of the reports written before version 3 (``schema_version`` 2), which :func:`validate_report` accepts.
REPORT_SCHEMA_V2: dict[str, Any] = _version_2()


def validate_report(document: Any) -> None:
    """Check a parsed JSON report against :data:`REPORT_SCHEMA` with ``jsonschema``; returns None or raises.

    A document whose ``schema_version`` is 2 (written before version 3) is checked against
    :data:`REPORT_SCHEMA_V2` instead; any other is checked against the current schema. A partial
    report (``"complete": false``) is a valid report.

    Args:
        document: the parsed JSON (``json.load`` of a report file, or ``report.to_dict()``).

    Raises:
        ParameterError: the document does not follow the schema (the message gives the path and the rule).
        ImportError: ``jsonschema`` is not installed (it comes with ``pip install "convspectra[report]"``).

    Example:
        >>> from convspectra.analysis import validate_report
        >>> validate_report({"schema_version": 3})
        Traceback (most recent call last):
        ...
        convspectra.errors.ParameterError: report: 'convspectra_version' is a required property
    """
    try:
        import jsonschema
    except ImportError:
        raise ImportError('validate_report needs the jsonschema package: pip install "convspectra[report]"') from None
    version = document.get("schema_version") if isinstance(document, dict) else None
    schema = REPORT_SCHEMA_V2 if version == 2 and not isinstance(version, bool) else REPORT_SCHEMA
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise ParameterError(f"report{where}: {error.message}")
