#!/usr/bin/env python3
"""Validate Kiln's OpenAPI document and, optionally, compare its operations with the
server's route table.

Usage:
    python3 docs/check_openapi.py [ROUTES_FILE] [--spec PATH]

ROUTES_FILE has one route per line, "METHOD /path/template" (blank lines and lines
starting with # are skipped). The set of (method, path) operations in the document
must equal that set exactly.

Needs PyYAML and openapi-spec-validator (CI: `pip install openapi-spec-validator`,
which brings PyYAML along).
"""
import argparse
import os
import sys

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def load_document(path):
    try:
        import yaml
    except ImportError:
        fail("check_openapi: PyYAML is missing (pip install pyyaml)")
    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        fail(f"check_openapi: cannot read {path}: {e}")
    if not isinstance(doc, dict):
        fail(f"check_openapi: {path} is not a YAML mapping")
    return doc


def validate(doc, path):
    try:
        from openapi_spec_validator import validate as validate_spec
    except ImportError:
        try:  # releases before 0.6
            from openapi_spec_validator import validate_spec
        except ImportError:
            fail("check_openapi: openapi-spec-validator is missing (pip install openapi-spec-validator)")
    if doc.get("openapi") != "3.1.0":
        fail(f"check_openapi: expected openapi: 3.1.0, found {doc.get('openapi')!r}")
    base_uri = "file://" + os.path.abspath(path)
    try:
        # Validates against the OpenAPI 3.1 schema and resolves every $ref.
        validate_spec(doc, base_uri=base_uri)
    except Exception as e:  # the validator raises several exception types
        message = getattr(e, "message", None) or str(e)
        if len(message) > 400:
            message = message[:400] + "..."
        where = " > ".join(str(p) for p in getattr(e, "path", None) or [])
        fail(f"check_openapi: {path} is not valid OpenAPI{' at ' + where if where else ''}: {message}")


def document_operations(doc):
    ops = set()
    for template, item in (doc.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        for method in item:
            if method.lower() in HTTP_METHODS:
                ops.add((method.upper(), template))
    return ops


def read_routes(path):
    routes = set()
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        fail(f"check_openapi: cannot read {path}: {e}")
    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].startswith("/"):
            fail(f"check_openapi: {path}:{number}: expected 'METHOD /path', got {raw!r}")
        routes.add((parts[0].upper(), parts[1]))
    return routes


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("routes", nargs="?", help="file of 'METHOD /path/template' lines")
    parser.add_argument("--spec", default=os.path.join(here, "openapi.yaml"), help="the OpenAPI document")
    args = parser.parse_args()

    doc = load_document(args.spec)
    validate(doc, args.spec)
    ops = document_operations(doc)

    if args.routes is not None:
        routes = read_routes(args.routes)
        missing = sorted(routes - ops, key=lambda o: (o[1], o[0]))
        extra = sorted(ops - routes, key=lambda o: (o[1], o[0]))
        for method, template in missing:
            print(f"missing from the document: {method} {template}")
        for method, template in extra:
            print(f"in the document but not a route: {method} {template}")
        if missing or extra:
            print(f"openapi: {len(missing)} missing, {len(extra)} extra operations", file=sys.stderr)
            sys.exit(1)

    print(f"openapi: {len(ops)} operations, valid")


if __name__ == "__main__":
    main()
