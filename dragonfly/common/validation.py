"""Request validation with the protoc-gen-validate rules of Dragonfly's protos (docs/interop.md#request-validation).

Dragonfly's services check every request against the ``(validate.rules)`` options of its ``.proto`` files and answer
``INVALID_ARGUMENT`` naming the failing field; the table of those rules is generated into ``validation_rules.py``.
This module compiles the table once per message type into a list of checks (walking into set sub-messages, repeated
and map values as protoc-gen-validate does) and runs them: ``check(message)`` returns the first violation as
``"invalid <Message>.<field path>: <reason>"``, or ``None``. The gRPC servers run it on every decoded request
(``grpc_decoding``).

Semantics follow protoc-gen-validate: a proto3 ``optional`` field is checked only when set; ``ignore_empty`` skips a
zero value; a set message field is validated recursively; a required oneof must have a member set.

Every request a server decodes is checked, a scheduler's piece reports included, so each message type's checks are
also generated into one Python function (``_generate``): its fields read as attributes, a string's length rules
inline, a oneof as one branch, the other rules through the same test closures. That function is what runs; the list
of check closures (``_Validator.first_violation``) stays as its reference, and tests compare the two on every
case. A piece report runs 5 Python calls instead of 22 (bench/RESULTS.md §6).
"""

from __future__ import annotations

import ipaddress
import keyword
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from dragonfly.common import validation_rules

# One check: the message in, the violation out ("<field path>: <reason>"), or None.
Check = Callable[[Any], "str | None"]

_NUMERIC = {"int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64", "double", "float"}
# Go's url.Parse refuses ASCII control characters and spaces in a host; an absolute URI has a scheme.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?\Z")


def _no_violation(_message: Any) -> str | None:
    return None


class _Validator:
    """The compiled checks of one message type: ``run`` (generated) and ``first_violation`` (its reference)."""

    __slots__ = ("checks", "name", "run")

    def __init__(self, name: str) -> None:
        self.name = name
        self.checks: list[Check] = []
        # Replaced by the generated function once the type is compiled; a recursive type's own field reads it
        # at call time.
        self.run: Check = _no_violation

    def first_violation(self, message: Any) -> str | None:
        """The reference: the check closures in protoc-gen-validate's order, the first violation wins."""
        for check in self.checks:
            violation = check(message)
            if violation is not None:
                return violation
        return None


_compiled: dict[str, _Validator | None] = {}


def check(message: Message) -> str | None:
    """Return the first rule ``message`` breaks as ``"invalid <Message>.<path>: <reason>"``, or None."""
    return _first_violation(message, reference=False)


def reference_check(message: Message) -> str | None:
    """``check`` through the check closures instead of the generated function (the tests' oracle)."""
    return _first_violation(message, reference=True)


def _first_violation(message: Message, *, reference: bool) -> str | None:
    descriptor = message.DESCRIPTOR
    validator = _validator(descriptor)
    if validator is None:
        return None
    violation = validator.first_violation(message) if reference else validator.run(message)
    return None if violation is None else f"invalid {descriptor.name}.{violation}"


def checker(descriptor: Descriptor) -> Check | None:
    """Return ``check`` for messages of one type (None when it has no rules), without the per-call type lookup."""
    validator = _validator(descriptor)
    if validator is None:
        return None
    run = validator.run
    prefix = f"invalid {descriptor.name}."

    def check_message(message: Any) -> str | None:
        violation = run(message)
        return None if violation is None else prefix + violation

    return check_message


def _validator(descriptor: Descriptor) -> _Validator | None:
    name = descriptor.full_name
    if name in _compiled:
        return _compiled[name]
    validator = _Validator(name)
    _compiled[name] = validator  # placed first, so a recursive type refers to itself
    validator.checks = _compile(descriptor)
    if not validator.checks:
        _compiled[name] = None
        return None
    validator.run = _generate(descriptor)
    return validator


def _compile(descriptor: Descriptor) -> list[Check]:
    checks: list[Check] = []
    rules = validation_rules.FIELDS.get(descriptor.full_name, {})
    # protoc-gen-validate's order: the fields outside oneofs, then each oneof (required first, then its member).
    members: dict[str, list[Check]] = {}
    for field in descriptor.fields:
        own = _field_check(field, *rules[field.name]) if field.name in rules else None
        field_checks = [check for check in (own, _nested_check(field)) if check is not None]
        oneof = field.containing_oneof
        if oneof is not None and not _synthetic(oneof):
            members[field.name] = field_checks
        else:
            checks.extend(field_checks)
    required = validation_rules.REQUIRED_ONEOFS.get(descriptor.full_name, ())
    for oneof in descriptor.oneofs:
        if _synthetic(oneof):
            continue
        dispatch = {field.name: members[field.name] for field in oneof.fields if members.get(field.name)}
        if dispatch or oneof.name in required:
            checks.append(_oneof_check(oneof.name, oneof.name in required, dispatch))
    return checks


class _Source:
    """The lines of one generated function and the objects its code refers to by name."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.names: dict[str, Any] = {}

    def bind(self, value: Any) -> str:
        name = f"_{len(self.names)}"
        self.names[name] = value
        return name


def _attribute(name: str) -> str:
    """Return the expression reading field ``name`` of ``m`` (a field named like a keyword through getattr)."""
    return f"getattr(m, {name!r})" if keyword.iskeyword(name) else f"m.{name}"


def _generate(descriptor: Descriptor) -> Check:
    """Return one function doing what ``_compile``'s closures do, in the same order, with the same messages."""
    source = _Source()
    rules = validation_rules.FIELDS.get(descriptor.full_name, {})
    body: list[str] = []
    members: dict[str, list[str]] = {}
    for field in descriptor.fields:
        code = _field_code(field, *rules[field.name], source) if field.name in rules else []
        code += _nested_code(field, source)
        oneof = field.containing_oneof
        if oneof is not None and not _synthetic(oneof):
            members[field.name] = code
        else:
            body += code
    required = validation_rules.REQUIRED_ONEOFS.get(descriptor.full_name, ())
    for oneof in descriptor.oneofs:
        if _synthetic(oneof):
            continue
        dispatch = {field.name: members[field.name] for field in oneof.fields if members.get(field.name)}
        if not dispatch and oneof.name not in required:
            continue
        body.append(f"w = m.WhichOneof({oneof.name!r})")
        if oneof.name in required:
            violation = f"{oneof.name}: value is required"
            body.append(f"if w is None: return {violation!r}")
        for index, (name, code) in enumerate(dispatch.items()):
            body.append(f"{'elif' if index else 'if'} w == {name!r}:")
            body += [f"    {line}" for line in code]
    lines = ["def generated(m):", *(f"    {line}" for line in body), "    return None"]
    namespace = dict(source.names)
    exec(compile("\n".join(lines), f"<validation of {descriptor.full_name}>", "exec"), namespace)
    generated: Check = namespace["generated"]
    return generated


def _field_code(field: FieldDescriptor, kind: str, params: dict[str, Any], source: _Source) -> list[str]:
    """Return the statements applying one field's own rule (``return <violation>`` or fall through)."""
    name = field.name
    closure = _field_check(field, kind, params)  # also refuses rules it does not know, as _compile does
    if kind in ("message", "timestamp", "duration") and set(params) <= {"required", "skip"}:
        if not params.get("required"):
            return []
        violation = f"{name}: value is required"
        return [f"if not m.HasField({name!r}): return {violation!r}"]
    if kind in ("string", "bytes") and not field.is_repeated:
        rest = dict(params)
        ignore_empty = bool(rest.pop("ignore_empty", False))
        presence = field.has_presence
        unit = "runes" if kind == "string" else "bytes"
        code = [f"v = {_attribute(name)}"]
        tests = []
        if set(rest) <= {"min_len", "max_len", "len"}:
            for key, op, words in (
                ("len", "!=", "must be"),
                ("min_len", "<", "must be at least"),
                ("max_len", ">", "must be at most"),
            ):
                if key in rest:
                    limit = int(rest[key])
                    violation = f"{name}: value length {words} {limit} {unit}"
                    tests.append(f"if len(v) {op} {limit}: return {violation!r}")
        else:
            test = _string_test(rest) if kind == "string" else _bytes_test(rest)
            tests = [f"r = {source.bind(test)}(v)", f"if r is not None: return {name + ': '!r} + r"]
        if not tests:
            return []
        if presence:
            # Read the value only once it is known to be set, as the closure does.
            code = [f"if m.HasField({name!r}):", f"    v = {_attribute(name)}"]
            if ignore_empty:
                code.append("    if v:")
                return code + [f"        {line}" for line in tests]
            return code + [f"    {line}" for line in tests]
        if ignore_empty:
            return [*code, "if v:", *(f"    {line}" for line in tests)]
        return code + tests
    return [f"r = {source.bind(closure)}(m)", "if r is not None: return r"]


def _nested_code(field: FieldDescriptor, source: _Source) -> list[str]:
    """Return the statements validating a set sub-message, each item of a repeated one and each value of a map."""
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return []
    name = field.name
    entry = field.message_type
    if entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        if value_field.type != FieldDescriptor.TYPE_MESSAGE:
            return []
        validator = _validator(value_field.message_type)
        if validator is None:
            return []
        run = source.bind(validator)
        return [
            f"for k, item in {_attribute(name)}.items():",
            f"    r = {run}.run(item)",
            f"    if r is not None: return {name + '['!r} + repr(k) + '].' + r",
        ]
    validator = _validator(entry)
    if validator is None:
        return []
    run = source.bind(validator)
    if field.is_repeated:
        return [
            f"for i, item in enumerate({_attribute(name)}):",
            f"    r = {run}.run(item)",
            f"    if r is not None: return {name + '['!r} + str(i) + '].' + r",
        ]
    return [
        f"if m.HasField({name!r}):",
        f"    r = {run}.run({_attribute(name)})",
        f"    if r is not None: return {name + '.'!r} + r",
    ]


def _synthetic(oneof: Any) -> bool:
    """Return whether a oneof is the one protoc makes for a proto3 ``optional`` field."""
    fields = oneof.fields
    return len(fields) == 1 and oneof.name == "_" + fields[0].name and fields[0].has_presence


def _oneof_check(oneof: str, required: bool, dispatch: dict[str, list[Check]]) -> Check:
    """Check that a required oneof is set, then the checks of the member that is."""

    def oneof_check(message: Any) -> str | None:
        which = message.WhichOneof(oneof)
        if which is None:
            return f"{oneof}: value is required" if required else None
        for check in dispatch.get(which, ()):
            violation = check(message)
            if violation is not None:
                return violation
        return None

    return oneof_check


def _nested_check(field: FieldDescriptor) -> Check | None:
    """Validate set sub-messages, each item of a repeated one and each value of a map."""
    if field.type != FieldDescriptor.TYPE_MESSAGE:
        return None
    name = field.name
    entry = field.message_type
    if entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        if value_field.type != FieldDescriptor.TYPE_MESSAGE:
            return None
        map_validator = _validator(value_field.message_type)
        if map_validator is None:
            return None

        def each_value(message: Any) -> str | None:
            for key, value in getattr(message, name).items():
                violation = map_validator.first_violation(value)
                if violation is not None:
                    return f"{name}[{key!r}].{violation}"
            return None

        return each_value
    # A type being compiled (a recursive one) is returned as it stands; its checks are filled in before use.
    validator = _validator(entry)
    if validator is None:
        return None

    if field.is_repeated:

        def each_item(message: Any) -> str | None:
            for index, item in enumerate(getattr(message, name)):
                violation = validator.first_violation(item)
                if violation is not None:
                    return f"{name}[{index}].{violation}"
            return None

        return each_item

    def embedded(message: Any) -> str | None:
        if not message.HasField(name):
            return None
        violation = validator.first_violation(getattr(message, name))
        return None if violation is None else f"{name}.{violation}"

    return embedded


def _field_check(field: FieldDescriptor, kind: str, params: dict[str, Any]) -> Check:
    name = field.name
    params = dict(params)
    ignore_empty = bool(params.pop("ignore_empty", False))
    repeated = field.is_repeated
    # proto3 `optional` scalars (and message fields) are checked only when set.
    presence = not repeated and field.has_presence and field.type != FieldDescriptor.TYPE_MESSAGE
    if kind == "repeated":
        if not repeated:
            raise ValueError(f"{field.full_name}: repeated rules on a singular field")
        test = _repeated_test(params)

        def repeated_check(message: Any) -> str | None:
            values = getattr(message, name)
            if ignore_empty and not values:
                return None
            reason = test(values)
            return None if reason is None else f"{name}: {reason}"

        return repeated_check
    if kind in ("message", "timestamp", "duration"):
        return _message_check(name, kind, params)
    if kind == "enum":
        return _enum_check(field, params)
    if repeated:
        raise ValueError(f"{field.full_name}: {kind} rules on a repeated field")
    if kind == "string":
        test = _string_test(params)
    elif kind == "bytes":
        test = _bytes_test(params)
    elif kind in _NUMERIC:
        test = _number_test(params)
    elif kind == "bool":
        test = _const_test(params)
    else:
        raise ValueError(f"{field.full_name}: unsupported rule kind {kind!r}")

    def scalar_check(message: Any) -> str | None:
        if presence and not message.HasField(name):
            return None
        value = getattr(message, name)
        if ignore_empty and not value:
            return None
        reason = test(value)
        return None if reason is None else f"{name}: {reason}"

    return scalar_check


def _unknown(params: dict[str, Any], known: set[str], kind: str) -> None:
    extra = set(params) - known
    if extra:
        raise ValueError(f"unsupported {kind} rules {sorted(extra)}")


def _message_check(name: str, kind: str, params: dict[str, Any]) -> Check:
    _unknown(params, {"required", "skip", "gte", "lte", "gt", "lt"}, kind)
    required = bool(params.get("required", False))
    bounds = [(op, _duration_nanos(params[op])) for op in ("gte", "gt", "lte", "lt") if op in params]

    def message_check(message: Any) -> str | None:
        if not message.HasField(name):
            return f"{name}: value is required" if required else None
        if bounds:
            value = getattr(message, name)
            nanos = value.seconds * 1_000_000_000 + value.nanos
            for op, limit in bounds:
                if not _compare(op, nanos, limit):
                    return f"{name}: value must be {_WORDS[op]} {_duration_text(limit)}"
        return None

    return message_check


def _enum_check(field: FieldDescriptor, params: dict[str, Any]) -> Check:
    _unknown(params, {"defined_only", "in", "not_in", "const"}, "enum")
    name = field.name
    defined = frozenset(field.enum_type.values_by_number) if params.get("defined_only") else None
    allowed = frozenset(params["in"]) if "in" in params else None
    refused = frozenset(params.get("not_in", ()))
    const = params.get("const")
    repeated = field.is_repeated
    presence = not repeated and field.has_presence

    def reason(value: int) -> str | None:
        if defined is not None and value not in defined:
            return "value must be one of the defined enum values"
        if allowed is not None and value not in allowed:
            return f"value must be in list {sorted(allowed)}"
        if value in refused:
            return f"value must not be in list {sorted(refused)}"
        if const is not None and value != const:
            return f"value must equal {const}"
        return None

    def enum_check(message: Any) -> str | None:
        if presence and not message.HasField(name):
            return None
        values = getattr(message, name)
        for index, value in enumerate(values if repeated else (values,)):
            found = reason(value)
            if found is not None:
                return f"{name}[{index}]: {found}" if repeated else f"{name}: {found}"
        return None

    return enum_check


def _repeated_test(params: dict[str, Any]) -> Callable[[Any], str | None]:
    _unknown(params, {"min_items", "max_items", "unique"}, "repeated")
    min_items = params.get("min_items")
    max_items = params.get("max_items")
    unique = bool(params.get("unique", False))

    def test(values: Any) -> str | None:
        if min_items is not None and len(values) < min_items:
            return f"value must contain at least {min_items} item(s)"
        if max_items is not None and len(values) > max_items:
            return f"value must contain no more than {max_items} item(s)"
        if unique and len(set(values)) != len(values):
            return "repeated value must contain unique items"
        return None

    return test


def _string_test(params: dict[str, Any]) -> Callable[[Any], str | None]:
    _unknown(
        params,
        {"min_len", "max_len", "len", "pattern", "uri", "ip", "ipv4", "ipv6", "hostname", "in", "not_in", "const"},
        "string",
    )
    tests: list[Callable[[str], str | None]] = []
    if "const" in params:
        const = params["const"]
        tests.append(lambda value: None if value == const else f"value must equal {const}")
    if "len" in params:
        exact = params["len"]
        tests.append(lambda value: None if len(value) == exact else f"value length must be {exact} runes")
    if "min_len" in params:
        least = params["min_len"]
        tests.append(lambda value: None if len(value) >= least else f"value length must be at least {least} runes")
    if "max_len" in params:
        most = params["max_len"]
        tests.append(lambda value: None if len(value) <= most else f"value length must be at most {most} runes")
    if "pattern" in params:
        pattern = re.compile(params["pattern"])
        tests.append(
            lambda value: None if pattern.search(value) else f"value does not match regex pattern {pattern.pattern!r}"
        )
    if "in" in params:
        allowed = frozenset(params["in"])
        tests.append(lambda value: None if value in allowed else f"value must be in list {sorted(allowed)}")
    if "not_in" in params:
        refused = frozenset(params["not_in"])
        tests.append(lambda value: None if value not in refused else f"value must not be in list {sorted(refused)}")
    if params.get("uri"):
        tests.append(lambda value: None if _absolute_uri(value) else "value must be an absolute URI")
    if params.get("ip"):
        tests.append(lambda value: None if _ip(value, (4, 6)) else "value must be a valid IP address")
    if params.get("ipv4"):
        tests.append(lambda value: None if _ip(value, (4,)) else "value must be a valid IPv4 address")
    if params.get("ipv6"):
        tests.append(lambda value: None if _ip(value, (6,)) else "value must be a valid IPv6 address")
    if params.get("hostname"):
        tests.append(lambda value: None if _hostname(value) else "value must be a valid hostname")
    return _all(tests)


def _bytes_test(params: dict[str, Any]) -> Callable[[Any], str | None]:
    _unknown(params, {"min_len", "max_len", "len"}, "bytes")
    tests: list[Callable[[bytes], str | None]] = []
    if "len" in params:
        exact = params["len"]
        tests.append(lambda value: None if len(value) == exact else f"value length must be {exact} bytes")
    if "min_len" in params:
        least = params["min_len"]
        tests.append(lambda value: None if len(value) >= least else f"value length must be at least {least} bytes")
    if "max_len" in params:
        most = params["max_len"]
        tests.append(lambda value: None if len(value) <= most else f"value length must be at most {most} bytes")
    return _all(tests)


_WORDS = {"gte": "greater than or equal to", "gt": "greater than", "lte": "less than or equal to", "lt": "less than"}


def _compare(op: str, value: float, limit: float) -> bool:
    if op == "gte":
        return value >= limit
    if op == "gt":
        return value > limit
    if op == "lte":
        return value <= limit
    return value < limit


def _number_test(params: dict[str, Any]) -> Callable[[Any], str | None]:
    _unknown(params, {"gte", "gt", "lte", "lt", "const", "in", "not_in"}, "number")
    low = next(((op, params[op]) for op in ("gte", "gt") if op in params), None)
    high = next(((op, params[op]) for op in ("lte", "lt") if op in params), None)
    if low is not None and high is not None:
        brackets = ("[" if low[0] == "gte" else "(") + f"{low[1]}, {high[1]}" + ("]" if high[0] == "lte" else ")")
        range_reason = f"value must be inside range {brackets}"
    else:
        bound = low or high
        range_reason = f"value must be {_WORDS[bound[0]]} {bound[1]}" if bound is not None else ""
    bounds = [bound for bound in (low, high) if bound is not None]
    allowed = frozenset(params["in"]) if "in" in params else None
    refused = frozenset(params.get("not_in", ()))
    const = params.get("const")

    def test(value: float) -> str | None:
        for op, limit in bounds:
            if not _compare(op, value, limit):
                return range_reason
        if allowed is not None and value not in allowed:
            return f"value must be in list {sorted(allowed)}"
        if value in refused:
            return f"value must not be in list {sorted(refused)}"
        if const is not None and value != const:
            return f"value must equal {const}"
        return None

    return test


def _const_test(params: dict[str, Any]) -> Callable[[Any], str | None]:
    _unknown(params, {"const"}, "bool")
    const = params.get("const")
    return lambda value: None if const is None or value == const else f"value must equal {const}"


def _all(tests: list[Callable[[Any], str | None]]) -> Callable[[Any], str | None]:
    if len(tests) == 1:
        return tests[0]

    def test(value: Any) -> str | None:
        for one in tests:
            reason = one(value)
            if reason is not None:
                return reason
        return None

    return test


def _absolute_uri(value: str) -> bool:
    scheme, colon, _ = value.partition(":")
    if not colon or not _SCHEME.match(scheme) or _CONTROL.search(value):
        return False
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # an out-of-range or non-numeric port is refused, as Go's url.Parse does
    except ValueError:
        return False
    return " " not in parts.netloc


def _ip(value: str, versions: tuple[int, ...]) -> bool:
    try:
        return ipaddress.ip_address(value).version in versions
    except ValueError:
        return False


def _hostname(value: str) -> bool:
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253:
        return False
    return all(len(label) <= 63 and _HOSTNAME_LABEL.match(label) for label in name.split("."))


def _duration_nanos(value: Any) -> int:
    if isinstance(value, dict):
        return int(value.get("seconds", 0)) * 1_000_000_000 + int(value.get("nanos", 0))
    raise ValueError(f"a duration bound must be {{seconds, nanos}}, not {value!r}")


def _duration_text(nanos: int) -> str:
    seconds, rest = divmod(nanos, 1_000_000_000)
    return f"{seconds}s" if not rest else f"{nanos / 1e9}s"
