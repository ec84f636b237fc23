"""The JSON schema of a spectral report, and its check with ``jsonschema``.

:data:`REPORT_SCHEMA` (JSON Schema draft 2020-12) describes :meth:`SpectralReport.to_dict`
output (``schema_version`` 2: version 1 had no ``error`` per layer and no ``notes``).
:func:`validate_report` checks a parsed document against it with the ``jsonschema`` package
(an optional dependency, in the ``report`` extra). No torch needed.

Example:
    >>> import json, torch
    >>> from convspectra.analysis import REPORT_SCHEMA, spectral_report, validate_report
    >>> report = spectral_report(torch.nn.Conv2d(1, 2, 3, padding=1), (1, 8, 8))
    >>> validate_report(json.loads(report.to_json()))
    >>> REPORT_SCHEMA["properties"]["schema_version"]["const"]
    2
"""

from __future__ import annotations

from typing import Any

from ..errors import ParameterError

__all__ = ["REPORT_SCHEMA", "validate_report"]

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
        "seconds": {"type": "number", "minimum": 0},
        "note": {"type": ["string", "null"]},
        "error": {
            "type": ["string", "null"],
            "description": "why this layer's numbers are missing: the error of its computation (null: it ran)",
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
    "$id": "https://convspectra.invalid/schemas/spectral-report-1.json",
    "title": "convspectra spectral report",
    "type": "object",
    "additionalProperties": False,
    "required": [
        "schema_version",
        "convspectra_version",
        "model",
        "input_shape",
        "padding",
        "fold_bn",
        "relative_threshold",
        "seconds",
        "network_bound",
        "layers",
        "notes",
    ],
    "properties": {
        "schema_version": {"const": 2},
        "convspectra_version": {"type": "string"},
        "model": {"type": "string"},
        "input_shape": {**_INT_LIST, "description": "shape of the example input, batch axis first"},
        "padding": {"enum": ["circular", "model"]},
        "fold_bn": {"type": "boolean"},
        "relative_threshold": {"type": "number", "minimum": 0},
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


def validate_report(document: Any) -> None:
    """Check a parsed JSON report against :data:`REPORT_SCHEMA` with ``jsonschema``; returns None or raises.

    Args:
        document: the parsed JSON (``json.load`` of a report file, or ``report.to_dict()``).

    Raises:
        ParameterError: the document does not follow the schema (the message gives the path and the rule).
        ImportError: ``jsonschema`` is not installed (it comes with ``pip install "convspectra[report]"``).

    Example:
        >>> from convspectra.analysis import validate_report
        >>> validate_report({"schema_version": 2})
        Traceback (most recent call last):
        ...
        convspectra.errors.ParameterError: report: 'convspectra_version' is a required property
    """
    try:
        import jsonschema
    except ImportError:
        raise ImportError('validate_report needs the jsonschema package: pip install "convspectra[report]"') from None
    validator = jsonschema.Draft202012Validator(REPORT_SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        raise ParameterError(f"report{where}: {error.message}")
