"""The JSON schema of a spectral report, and a validator that needs no third-party package.

:data:`REPORT_SCHEMA` (JSON Schema draft 2020-12) describes :meth:`SpectralReport.to_dict`
output (``schema_version`` 1). :func:`validate_report` checks a parsed document against it with
``jsonschema`` when that package is installed, else with a small built-in validator covering
the keywords the schema uses (type, properties, required, additionalProperties, items, enum,
minimum, const).

Example:
    >>> import json, torch
    >>> from convspectra.analysis import REPORT_SCHEMA, spectral_report, validate_report
    >>> report = spectral_report(torch.nn.Conv2d(1, 2, 3, padding=1), (1, 8, 8))
    >>> validate_report(json.loads(report.to_json()))
    >>> REPORT_SCHEMA["properties"]["schema_version"]["const"]
    1
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
    ],
    "properties": {
        "schema_version": {"const": 1},
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
            "required": ["value", "padding", "description"],
            "properties": {
                "value": {**_NONNEG_OR_NULL, "description": "UPPER bound on the Lipschitz constant, or null"},
                "padding": {"enum": ["circular", "model"]},
                "description": {"type": "string"},
            },
        },
        "layers": {"type": "array", "items": _LAYER},
    },
}

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def _check(value: Any, schema: dict[str, Any], path: str) -> None:
    if "const" in schema and value != schema["const"]:
        raise ParameterError(f"report{path}: expected {schema['const']!r}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise ParameterError(f"report{path}: expected one of {schema['enum']}, got {value!r}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](value) for t in types):
            raise ParameterError(f"report{path}: expected {' or '.join(types)}, got {type(value).__name__}")
    if "minimum" in schema and _TYPES["number"](value) and value < schema["minimum"]:
        raise ParameterError(f"report{path}: expected >= {schema['minimum']}, got {value!r}")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                raise ParameterError(f"report{path}: missing required key {key!r}")
        properties = schema.get("properties", {})
        for key, item in value.items():
            if key in properties:
                _check(item, properties[key], f"{path}.{key}")
            elif schema.get("additionalProperties", True) is False:
                raise ParameterError(f"report{path}: unexpected key {key!r}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            _check(item, schema["items"], f"{path}[{i}]")


def validate_report(document: Any, *, use_jsonschema: bool | None = None) -> None:
    """Check a parsed JSON report against :data:`REPORT_SCHEMA`; returns None or raises.

    Args:
        document: the parsed JSON (``json.load`` of a report file, or ``report.to_dict()``).
        use_jsonschema: True: use the ``jsonschema`` package (ImportError if absent); False: the
            built-in validator; None (default): ``jsonschema`` when installed.

    Raises:
        ParameterError: the document does not follow the schema (the message gives the path).

    Example:
        >>> from convspectra.analysis import validate_report
        >>> validate_report({"schema_version": 1}, use_jsonschema=False)
        Traceback (most recent call last):
        ...
        convspectra.errors.ParameterError: report: missing required key 'convspectra_version'
    """
    if use_jsonschema is None:
        try:
            import jsonschema
        except ImportError:
            use_jsonschema = False
        else:
            use_jsonschema = True
    if not use_jsonschema:
        _check(document, REPORT_SCHEMA, "")
        return
    import jsonschema

    try:
        jsonschema.Draft202012Validator(REPORT_SCHEMA).validate(document)
    except jsonschema.ValidationError as err:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        raise ParameterError(f"report{where}: {err.message}") from None
