#!/usr/bin/env python3
"""Generate dragonfly/common/validation_rules.py from the protoc-gen-validate annotations of dragonflyoss/api.

Dragonfly's Go scheduler and its generated Go code check every request against the ``(validate.rules)`` options of
the ``.proto`` files in https://github.com/dragonflyoss/api (``pkg/apis/<service>/v2/*.proto``); the Python stubs on
PyPI drop those options. This script reads the proto sources (a checkout or a bare git mirror of that repository),
extracts the rules as data (message, field, rule kind, parameters; required oneofs) and writes one table per
message. dragonfly/common/validation.py applies the table.

    scripts/gen_validation_rules.py --api DIR [--ref COMMIT] [--output FILE] [--check]

DIR is a work tree or a git directory of dragonflyoss/api (default: $DRAGONFLY_API_SRC). ``--check`` exits 1 when
the committed table differs from what the sources give (tests/unit/common/test_validation_rules.py runs it).
"""

from __future__ import annotations

import argparse
import os
import pprint
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROTOS = (
    "pkg/apis/common/v2/common.proto",
    "pkg/apis/errordetails/v2/errordetails.proto",
    "pkg/apis/scheduler/v2/scheduler.proto",
    "pkg/apis/dfdaemon/v2/dfdaemon.proto",
    "pkg/apis/manager/v2/manager.proto",
)
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "dragonfly" / "common" / "validation_rules.py"

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<comment>//[^\n]*|/\*.*?\*/)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?))
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<punct>[(){}\[\]<>=;:,.])
    """,
    re.VERBOSE | re.DOTALL,
)


def tokenize(text: str) -> list[str]:
    """Split proto source into tokens, comments and whitespace dropped."""
    tokens: list[str] = []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None:
            raise SyntaxError(f"unexpected character {text[position]!r} at offset {position}")
        position = match.end()
        if match.lastgroup not in ("space", "comment"):
            tokens.append(match.group())
    return tokens


def _scalar(token: str) -> Any:
    if token[0] in "\"'":
        return bytes(token[1:-1], "utf-8").decode("unicode_escape")
    if token in ("true", "false"):
        return token == "true"
    if re.fullmatch(r"[-+]?[0-9]+", token):
        return int(token)
    if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", token):
        return int(token, 16)
    try:
        return float(token)
    except ValueError:
        return token  # an enum value name


@dataclass
class Parser:
    tokens: list[str]
    position: int = 0
    package: str = ""
    fields: dict[str, dict[str, tuple[str, dict[str, Any]]]] = field(default_factory=dict)
    oneofs: dict[str, list[str]] = field(default_factory=dict)

    def peek(self) -> str:
        return self.tokens[self.position] if self.position < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if expected is not None and token != expected:
            raise SyntaxError(f"expected {expected!r}, got {token!r} at token {self.position}")
        self.position += 1
        return token

    def skip_statement(self) -> None:
        """Skip to the end of a statement or a braced block."""
        depth = 0
        while True:
            token = self.take()
            if token == "{":
                depth += 1
            elif token == "}":
                depth -= 1
                if depth == 0:
                    if self.peek() == ";":
                        self.take()
                    return
            elif token == ";" and depth == 0:
                return

    def dotted(self) -> str:
        name = self.take()
        if name == ".":
            name += self.take()
        while self.peek() == ".":
            self.take()
            name += "." + self.take()
        return name

    def parse(self) -> None:
        while self.position < len(self.tokens):
            token = self.peek()
            if token == "package":
                self.take()
                self.package = self.dotted()
                self.take(";")
            elif token == "message":
                self.message(prefix=self.package)
            else:
                self.skip_statement()

    def message(self, prefix: str) -> None:
        self.take("message")
        name = f"{prefix}.{self.take()}"
        self.take("{")
        while self.peek() != "}":
            token = self.peek()
            if token == "message":
                self.message(prefix=name)
            elif token == "oneof":
                self.oneof(name)
            elif token in ("enum", "reserved", "option", "extensions", "extend", ";"):
                self.skip_statement()
            else:
                self.field(name)
        self.take("}")

    def oneof(self, message: str) -> None:
        self.take("oneof")
        oneof_name = self.take()
        self.take("{")
        while self.peek() != "}":
            if self.peek() == "option":
                self.take()
                self.take("(")
                extension = self.dotted()
                self.take(")")
                self.take("=")
                value = _scalar(self.take())
                self.take(";")
                if extension == "validate.required" and value is True:
                    self.oneofs.setdefault(message, []).append(oneof_name)
            else:
                self.field(message)
        self.take("}")

    def field(self, message: str) -> None:
        if self.peek() in ("optional", "repeated", "required"):
            self.take()
        if self.peek() == "map":
            self.take()
            self.take("<")
            self.dotted()
            self.take(",")
            self.dotted()
            self.take(">")
        else:
            self.dotted()
        name = self.take()
        self.take("=")
        self.take()  # the field number
        rules: dict[str, Any] = {}
        kinds: set[str] = set()
        if self.peek() == "[":
            self.take()
            while True:
                self.option(rules, kinds)
                if self.take() == "]":
                    break
        self.take(";")
        if rules:
            if len(kinds) != 1:
                raise SyntaxError(f"{message}.{name}: rules of several kinds {sorted(kinds)}")
            self.fields.setdefault(message, {})[name] = (kinds.pop(), rules)

    def option(self, rules: dict[str, Any], kinds: set[str]) -> None:
        if self.peek() == "(":
            self.take()
            extension = self.dotted()
            self.take(")")
        else:
            extension = self.dotted()
        path: list[str] = []
        while self.peek() == ".":
            self.take()
            path.append(self.take())
        self.take("=")
        value = self.text_value()
        if extension != "validate.rules":
            return
        if not path:
            raise SyntaxError("(validate.rules) set as a whole is not supported")
        kinds.add(path[0])
        target = rules
        for key in path[1:-1]:
            target = target.setdefault(key, {})
        if len(path) == 1:
            if not isinstance(value, dict):
                raise SyntaxError(f"(validate.rules).{path[0]} must be a message")
            target.update(value)
        else:
            target[path[-1]] = value

    def text_value(self) -> Any:
        if self.peek() == "[":
            self.take()
            items = []
            while self.peek() != "]":
                items.append(self.text_value())
                if self.peek() == ",":
                    self.take()
            self.take("]")
            return items
        if self.peek() != "{":
            return _scalar(self.take())
        self.take("{")
        result: dict[str, Any] = {}
        while self.peek() != "}":
            key = self.take()
            if self.peek() == ":":
                self.take()
            value = self.text_value()
            if key in ("in", "not_in"):  # repeated fields: `in: "a" in: "b"` or `in: ["a", "b"]`
                value = [*result.get(key, []), *(value if isinstance(value, list) else [value])]
            result[key] = value
            if self.peek() in (",", ";"):
                self.take()
        self.take("}")
        return result


def read_sources(api: Path, ref: str) -> tuple[str, dict[str, str]]:
    """Return the commit and the proto texts, from a work tree or a git directory."""
    git = ["git", "-C", str(api)]
    commit = subprocess.run([*git, "rev-parse", ref], capture_output=True, text=True, check=True).stdout.strip()
    texts = {}
    for path in PROTOS:
        texts[path] = subprocess.run(
            [*git, "show", f"{commit}:{path}"], capture_output=True, text=True, check=True
        ).stdout
    return commit, texts


def extract(texts: dict[str, str]) -> tuple[dict[str, dict[str, tuple[str, dict[str, Any]]]], dict[str, list[str]]]:
    """Return (field rules by message, required oneofs by message) of all the given proto sources."""
    fields: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {}
    oneofs: dict[str, list[str]] = {}
    for path, text in texts.items():
        parser = Parser(tokenize(text))
        try:
            parser.parse()
        except SyntaxError as exc:
            raise SyntaxError(f"{path}: {exc}") from exc
        fields.update(parser.fields)
        oneofs.update(parser.oneofs)
    return fields, oneofs


def render(commit: str, fields: dict[str, Any], oneofs: dict[str, list[str]]) -> str:
    """Return the Python source of the table."""
    fields_text = pprint.pformat(fields, width=116, sort_dicts=True)
    oneofs_text = pprint.pformat({key: tuple(value) for key, value in oneofs.items()}, width=116, sort_dicts=True)
    return (
        "# ruff: noqa: E501  (regular expressions are kept on one line, as in the protos)\n"
        '"""protoc-gen-validate rules of Dragonfly\'s v2 protos, as data (docs/interop.md#request-validation).\n'
        "\n"
        "Generated by scripts/gen_validation_rules.py from dragonflyoss/api; do not edit. FIELDS maps a message's\n"
        "full name to its fields' rules: (kind, parameters) as written in the (validate.rules) option.\n"
        "REQUIRED_ONEOFS lists the oneofs marked (validate.required).\n"
        '"""\n'
        "\n"
        "from typing import Any\n"
        "\n"
        f'SOURCE = "github.com/dragonflyoss/api@{commit}"\n'
        f"PROTOS = {PROTOS!r}\n"
        "\n"
        f"FIELDS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {fields_text}\n"
        "\n"
        f"REQUIRED_ONEOFS: dict[str, tuple[str, ...]] = {oneofs_text}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default=os.environ.get("DRAGONFLY_API_SRC"), help="dragonflyoss/api checkout")
    parser.add_argument("--ref", default=None, help="commit to read (default: the one the table names; HEAD to update)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--check", action="store_true", help="exit 1 when the output is not current")
    args = parser.parse_args(argv)
    if not args.api:
        parser.error("--api DIR (or DRAGONFLY_API_SRC) is required")
    ref = args.ref
    if ref is None:
        current = args.output.read_text() if args.output.exists() else ""
        found = re.search(r'SOURCE = "github.com/dragonflyoss/api@([0-9a-f]{40})"', current)
        ref = found.group(1) if found else "HEAD"
    commit, texts = read_sources(Path(args.api), ref)
    fields, oneofs = extract(texts)
    source = render(commit, fields, oneofs)
    formatted = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(args.output), "-"],
        input=source,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if args.check:
        if args.output.read_text() != formatted:
            print(f"{args.output} is not what {commit} gives: run scripts/gen_validation_rules.py", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(formatted)
    print(f"{args.output}: {sum(map(len, fields.values()))} field rules in {len(fields)} messages from {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
