"""Turn Kubernetes' OpenAPI v2 document (swagger.json) into the per-kind JSON schemas kubeconform reads.

    python scripts/k8s_schemas.py SWAGGER_JSON OUT_DIR

Writes ``<kind>[-<group>]-<version>.json`` for every kind (kubeconform's default file name template
``{{ .ResourceKind }}{{ .KindSuffix }}.json``), each a standalone strict schema: every ``$ref`` inlined, objects with
declared properties closed (``additionalProperties: false``, so a misspelt field is an error), and the two string
formats Kubernetes also accepts as numbers (``int-or-string``, quantities) widened to allow both. Null is allowed
wherever a value is optional, as the API server does. This is the conversion kubeconform's own schema sets are
made with, written here so that CI can make the schemas from the OpenAPI document of the Kubernetes version it
checks against (scripts/deploy-tools.sh).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Types whose JSON form is a string or a number (intstr.IntOrString, resource.Quantity).
NUMBER_OR_STRING = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString",
    "io.k8s.apimachinery.pkg.api.resource.Quantity",
}


def convert(node: Any, definitions: dict[str, Any], stack: tuple[str, ...]) -> Any:
    """Return ``node`` with references inlined and the strictness rules applied."""
    if isinstance(node, list):
        return [convert(item, definitions, stack) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.removeprefix("#/definitions/")
        if name in NUMBER_OR_STRING:
            return {"anyOf": [{"type": "string"}, {"type": "number"}]}
        if name in stack:
            return {}  # a recursive type (JSONSchemaProps): accept anything below the cycle
        return convert(definitions[name], definitions, (*stack, name))
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {name: nullable(convert(sub, definitions, stack)) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = convert(value, definitions, stack)
        elif key == "format" and value == "int-or-string":
            continue
        else:
            out[key] = value
    if node.get("format") == "int-or-string":
        out.pop("type", None)
        out["anyOf"] = [{"type": "string"}, {"type": "integer"}]
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return schema


def file_name(gvk: dict[str, str]) -> str:
    kind, version = gvk["kind"].lower(), gvk["version"].lower()
    group = gvk.get("group", "").split(".")[0].lower()
    return f"{kind}-{group}-{version}.json" if group else f"{kind}-{version}.json"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    swagger = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    definitions: dict[str, Any] = swagger["definitions"]
    out = Path(argv[2])
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            schema = convert(definition, definitions, (name,))
            schema["$schema"] = "http://json-schema.org/schema#"
            (out / file_name(gvk)).write_text(json.dumps(schema, separators=(",", ":")), encoding="utf-8")
            written += 1
    print(f"k8s_schemas.py: {written} kind schemas in {out}")
    return 0 if written else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
