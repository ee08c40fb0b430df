"""``weights_manifest.json``: its schema, and loading it with validation.

The manifest is the single source of truth for every checkpoint: where it comes from, how to check it, how to
read it, which classes it predicts and how it was evaluated (the input normalisation is its architecture's). ``WEIGHT_SCHEMA`` is a JSON Schema (the subset
``_check`` implements: type, enum, pattern, minimum, minItems, required, properties, additionalProperties,
items, and ``oneOf`` picked by a ``kind`` constant). Checks that span fields (hash fields present as
``integrity`` says, a known architecture and layout) are in :func:`validate_manifest`.
"""
from __future__ import annotations

import json
import re
from importlib import resources

from ..errors import CitysegZooError

SCHEMA_VERSION = 2
HEX = "^[0-9a-f]+$"

_NORMALIZATION = {
    "type": "object", "additionalProperties": False,
    "required": ["channel_order", "scale", "mean", "std"],
    "properties": {
        "channel_order": {"enum": ["RGB", "BGR"]},
        "scale": {"enum": [1.0, 255.0]},          # 1.0: 0-255 pixels; 255.0: pixels divided to 0-1 first
        "mean": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
        "std": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3, "maxItems": 3},
    },
}
_PAIR = {"type": ["array", "null"], "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2}
_EVAL = {
    "type": "object", "additionalProperties": False,
    "required": ["mode", "crop_size", "stride", "scales", "flip"],
    "properties": {
        "mode": {"enum": ["whole", "slide"]},
        "crop_size": _PAIR, "stride": _PAIR,         # [h, w] of the sliding window; null for whole-image
        "scales": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 1},
        "flip": {"type": "boolean"},
        "resize": _PAIR,                            # image resized to [h, w] before inference (mmseg's pipeline)
        "style": {"enum": ["gald", "encoding"]},    # whose sliding window: GALD/CCNet eval.py, PyTorch-Encoding
        "note": {"type": "string"},
    },
}
_SOURCES = {
    "type": "array",
    "items": {"oneOf": [
        {"type": "object", "additionalProperties": False, "required": ["kind", "url"],
         "properties": {"kind": {"const": "http"}, "url": {"type": "string", "pattern": "^https?://"},
                        "note": {"type": "string"}}},
        {"type": "object", "additionalProperties": False, "required": ["kind", "id"],
         "properties": {"kind": {"const": "google_drive"}, "id": {"type": "string", "pattern": "^[0-9A-Za-z_-]+$"},
                        "url": {"type": "string", "pattern": "^https?://"}, "note": {"type": "string"}}},
        {"type": "object", "additionalProperties": False, "required": ["kind", "repo_id", "filename", "revision"],
         "properties": {"kind": {"const": "huggingface"}, "repo_id": {"type": "string"},
                        "filename": {"type": "string"}, "revision": {"type": "string"},
                        "note": {"type": "string"}}},
    ]},
}
WEIGHT_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "required": ["name", "architecture", "family", "num_classes", "classes", "filename", "format", "container",
                 "layout", "sources", "integrity", "sha256", "size", "eval", "reported", "license", "citation"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9_]+$"},
        "architecture": {"type": "string", "pattern": "^[a-z0-9_]+$"},
        "family": {"enum": ["original", "mmseg"]},      # the papers' own weights, or mmsegmentation's
        "num_classes": {"type": "integer", "minimum": 1},
        "classes": {"enum": ["cityscapes_trainids"]},   # a named class list (data/cityscapes.py)
        "filename": {"type": ["string", "null"]},
        "format": {"enum": ["pth", "safetensors", None]},
        "container": {"enum": ["bare", "state_dict", "module", "mmseg", None]},
        "layout": {"type": ["string", "null"]},        # key layout the converter applies (hub/convert.py)
        "model_kwargs": {"type": "object"},
        "sources": _SOURCES,                            # tried in order after the cache and the mirror
        # how the file is checked: full sha256 + size; the hash prefix its publisher put in the file name;
        # trust on first use (warns, then pins what it saw); or nothing to check (never released).
        "integrity": {"enum": ["sha256", "sha256_prefix", "trust_on_first_use", "unreleased"]},
        "sha256": {"type": ["string", "null"], "pattern": "^[0-9a-f]{64}$"},
        "sha256_prefix": {"type": "string", "pattern": "^[0-9a-f]{8,63}$"},
        "size": {"type": ["integer", "null"], "minimum": 1},
        "input": _NORMALIZATION,   # only where the weight was trained with another normalisation than its
                                   # architecture's (ArchSpec.input owns it otherwise)
        "eval": _EVAL,
        "reported": {"type": "object", "additionalProperties": False, "properties": {
            "val_miou": {"type": "number"}, "val_ms_flip_miou": {"type": "number"},
            "test_miou": {"type": "number"}, "note": {"type": "string"}}},
        "license": {"type": ["string", "null"]},
        "citation": {"type": "string"},
        "terms": {"type": "string"},   # licence notice shown once when the weights are loaded (non-commercial...)
        "note": {"type": "string"},
    },
}
MANIFEST_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["schema_version", "weights"],
    "properties": {"schema_version": {"enum": [SCHEMA_VERSION]}, "$comment": {"type": "string"},
                   "weights": {"type": "array", "items": WEIGHT_SCHEMA, "minItems": 1}},
}


class ManifestError(CitysegZooError, ValueError):
    """The weights manifest does not follow its schema."""


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
          "number": (int, float), "integer": int}


def _is(value, type_name: str) -> bool:
    if type_name in ("number", "integer") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[type_name])


def _check(value, schema: dict, where: str) -> list[str]:
    """Errors of ``value`` against ``schema`` (the JSON Schema subset described in the module docstring)."""
    if "oneOf" in schema:  # sources: the branch whose "kind" constant matches
        kind = value.get("kind") if isinstance(value, dict) else None
        branch = next((s for s in schema["oneOf"] if s["properties"]["kind"]["const"] == kind), None)
        if branch is None:
            kinds = [s["properties"]["kind"]["const"] for s in schema["oneOf"]]
            return [f"{where}: kind {kind!r} is not one of {kinds}"]
        return _check(value, branch, where)
    if "const" in schema and value != schema["const"]:
        return [f"{where}: must be {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, t) for t in types):
            return [f"{where}: expected {' or '.join(types)}, got {type(value).__name__}"]
    errors = []
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if _is(value, "number"):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} < {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{where}: {value} <= {schema['exclusiveMinimum']}")
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            errors.append(f"{where}: {len(value)} items, expected {schema.get('minItems', 0)}"
                          f"..{schema.get('maxItems', 'any')}")
        for i, item in enumerate(value):
            errors += _check(item, schema.get("items", {}), f"{where}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        errors += [f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        if schema.get("additionalProperties", True) is False:
            errors += [f"{where}: unknown field {key!r}" for key in value if key not in properties]
        for key, item in value.items():
            if key in properties:
                errors += _check(item, properties[key], f"{where}.{key}")
    return errors


def _check_entry(entry: dict) -> list[str]:
    """Rules spanning several fields of one weight entry."""
    where, errors = f"weights[{entry.get('name')!r}]", []
    integrity = entry.get("integrity")
    released = bool(entry.get("sources"))
    if not entry.get("name", "").startswith(entry.get("architecture", "") + "_"):
        errors.append(f"{where}: name must be '<architecture>_<tag>'")
    if released == (integrity == "unreleased"):
        errors.append(f"{where}: integrity 'unreleased' if and only if there are no sources")
    if not released and "note" not in entry:
        errors.append(f"{where}: an unreleased weight needs a 'note' saying what to use instead")
    if released and not (entry.get("filename") and entry.get("format") and entry.get("layout")):
        errors.append(f"{where}: a released weight needs filename, format and layout")
    if (integrity == "sha256") != (entry.get("sha256") is not None and entry.get("size") is not None):
        errors.append(f"{where}: integrity 'sha256' if and only if both sha256 and size are given")
    if (integrity == "sha256_prefix") != ("sha256_prefix" in entry):
        errors.append(f"{where}: integrity 'sha256_prefix' if and only if sha256_prefix is given")
    return errors


def validate_manifest(manifest: dict, known_architectures: dict | None = None) -> None:
    """Raise :class:`ManifestError` listing every schema violation of ``manifest``.

    ``known_architectures``: ``{architecture: [layout names]}``; when given, each entry's architecture must be
    registered and its layout one that architecture can load.
    """
    errors = _check(manifest, MANIFEST_SCHEMA, "manifest")
    if not errors:
        names = [w["name"] for w in manifest["weights"]]
        errors += [f"manifest: weight name {n!r} appears twice" for n in sorted(set(names)) if names.count(n) > 1]
        for entry in manifest["weights"]:
            errors += _check_entry(entry)
            if known_architectures is not None:
                layouts = known_architectures.get(entry["architecture"])
                if layouts is None:
                    errors.append(f"weights[{entry['name']!r}]: unknown architecture {entry['architecture']!r}")
                elif entry["layout"] is not None and entry["layout"] not in layouts:
                    errors.append(f"weights[{entry['name']!r}]: {entry['architecture']} has no layout "
                                  f"{entry['layout']!r} (it has {layouts})")
    if errors:
        raise ManifestError("weights_manifest.json does not follow its schema:\n  " + "\n  ".join(errors))


def load_manifest(known_architectures: dict | None = None) -> dict:
    """The manifest shipped inside the package, validated."""
    text = resources.files("cityseg_zoo").joinpath("weights_manifest.json").read_text(encoding="utf-8")
    manifest = json.loads(text)
    validate_manifest(manifest, known_architectures)
    return manifest


def format_manifest(manifest: dict) -> str:
    """The manifest as the shipped file writes it: JSON with 2-space indents, lists of numbers on one line.

    ``python -m cityseg_zoo.hub.manifest`` rewrites the shipped file in this form (after an edit by hand or by a
    script); a test checks that the file is in it."""

    def dump(value, indent: int) -> str:
        pad, inner = " " * indent, " " * (indent + 2)
        if isinstance(value, dict) and value:
            items = [f"{inner}{json.dumps(k)}: {dump(v, indent + 2)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{pad}}}"
        if isinstance(value, list) and value and not all(_is(v, "number") or v is None for v in value):
            return "[\n" + ",\n".join(f"{inner}{dump(v, indent + 2)}" for v in value) + f"\n{pad}]"
        return json.dumps(value, ensure_ascii=False)

    return dump(manifest, 0) + "\n"


if __name__ == "__main__":
    path = resources.files("cityseg_zoo").joinpath("weights_manifest.json")
    text = format_manifest(json.loads(path.read_text(encoding="utf-8")))
    with open(str(path), "w", encoding="utf-8") as f:
        f.write(text)
