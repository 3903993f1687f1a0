"""JSON <-> protobuf as etcd's gateway does it, on the generated descriptors and json_format.

Encoding is json_format with proto field names, defaults omitted, int64 as strings,
bytes as base64 and enums by name, written compactly in field-number order: etcd's
bytes. Decoding checks each value against the descriptor first, so that bad input
is refused with the message Go's JSON decoder gives etcd's gateway (malformed JSON,
wrong types, bad base64, unknown enum names), then json_format fills the message.
Unknown fields are ignored, as both etcd 3.5 and 3.6 do; `null` means "not set".
"""

from __future__ import annotations

import base64
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

_INT_TYPES = {
    FieldDescriptor.TYPE_INT64: ("int64", -(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SINT64: ("int64", -(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_SFIXED64: ("int64", -(1 << 63), (1 << 63) - 1),
    FieldDescriptor.TYPE_UINT64: ("uint64", 0, (1 << 64) - 1),
    FieldDescriptor.TYPE_FIXED64: ("uint64", 0, (1 << 64) - 1),
    FieldDescriptor.TYPE_INT32: ("int32", -(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SINT32: ("int32", -(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SFIXED32: ("int32", -(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_UINT32: ("uint32", 0, (1 << 32) - 1),
    FieldDescriptor.TYPE_FIXED32: ("uint32", 0, (1 << 32) - 1),
}
_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(_B64_ALPHABET)}


class JsonError(ValueError):
    """Input the gateway refuses; the message is the one etcd's gateway sends."""


class Number:
    """A JSON number kept as its literal text (Go reports the literal: "number 1.5")."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _constant(name: str) -> Any:
    raise _GoSyntax(f"invalid character {_quote_char(name[0])} looking for beginning of value")


class _GoSyntax(ValueError):
    pass


_DECODER = json.JSONDecoder(parse_int=Number, parse_float=Number, parse_constant=_constant)
_WHITESPACE = " \t\r\n"


def _quote_char(c: str) -> str:
    if c == "'":
        return "'\\''"
    if c == '"':
        return "'\"'"
    return "'" + c.encode("unicode_escape").decode() + "'" if not c.isprintable() else f"'{c}'"


def _enclosing(doc: str, pos: int) -> str:
    """'{' or '[': the innermost container open at pos (strings skipped)."""
    stack: list[str] = []
    in_string = escaped = False
    for c in doc[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            stack.append(c)
        elif c in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _go_syntax_message(err: json.JSONDecodeError) -> str:
    doc, pos = err.doc, err.pos
    if err.msg.startswith("Unterminated string") or pos >= len(doc):
        return "unexpected EOF"
    c = _quote_char(doc[pos])
    for literal in ("true", "false", "null"):
        if doc[pos] == literal[0] and err.msg.startswith("Expecting value"):
            for i, expected in enumerate(literal[1:], 1):
                if pos + i >= len(doc):
                    return "unexpected EOF"
                if doc[pos + i] != expected:
                    bad = _quote_char(doc[pos + i])
                    return f"invalid character {bad} in literal {literal} (expecting '{expected}')"
    if err.msg.startswith("Invalid \\escape"):
        return f"invalid character {_quote_char(doc[pos + 1]) if pos + 1 < len(doc) else c} in string escape code"
    if err.msg.startswith("Invalid control character"):
        return f"invalid character {c} in string literal"
    if err.msg.startswith("Expecting property name"):
        return f"invalid character {c} looking for beginning of object key string"
    if err.msg.startswith("Expecting ':'"):
        return f"invalid character {c} after object key"
    if err.msg.startswith("Expecting ','"):
        where = "object key:value pair" if _enclosing(doc, pos) == "{" else "array element"
        return f"invalid character {c} after {where}"
    return f"invalid character {c} looking for beginning of value"


def parse_value(text: str, pos: int = 0) -> tuple[Any, int]:
    """The JSON value starting at pos (after whitespace) and the position after it, as Go's
    decoder reads one value from a stream. Raises JsonError (Go's message)."""
    while pos < len(text) and text[pos] in _WHITESPACE:
        pos += 1
    if pos >= len(text):
        raise JsonError("unexpected EOF")
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as err:
        raise JsonError(_go_syntax_message(err)) from None
    except _GoSyntax as err:
        raise JsonError(str(err)) from None


def _type_name(value: Any) -> str:
    if isinstance(value, Number):
        return "number"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _cannot(value: Any, go_type: str) -> JsonError:
    return JsonError(f"json: cannot unmarshal {_type_name(value)} into Go value of type {go_type}")


def _go_base64(s: str) -> bytes:
    """Go's base64.StdEncoding.DecodeString, with its error offsets."""
    if len(s) % 4 == 0 and "=" not in s.rstrip("="):
        try:  # the common case, in C; anything it refuses takes Go's path below for Go's message
            return base64.b64decode(s, validate=True)
        except ValueError:
            pass
    out = bytearray()
    si = 0
    n = len(s)
    while si < n:
        quantum: list[int] = []
        while len(quantum) < 4:
            if si == n:
                if not quantum:
                    return bytes(out)
                raise JsonError(f"illegal base64 data at input byte {si - len(quantum)}")
            c = s[si]
            si += 1
            if c in "\r\n":
                continue
            if c == "=":
                j = len(quantum)
                if j < 2:
                    raise JsonError(f"illegal base64 data at input byte {si - 1}")
                if j == 2:  # "==" needed
                    while si < n and s[si] in "\r\n":
                        si += 1
                    if si == n:
                        raise JsonError(f"illegal base64 data at input byte {n}")
                    if s[si] != "=":
                        raise JsonError(f"illegal base64 data at input byte {si}")
                    si += 1
                while si < n and s[si] in "\r\n":
                    si += 1
                if si < n:
                    raise JsonError(f"illegal base64 data at input byte {si}")
                bits = 0
                for sextet in quantum:
                    bits = bits << 6 | sextet
                bits <<= 6 * (4 - j)
                out += bytes((bits >> 16 & 0xFF, bits >> 8 & 0xFF)[: j - 1])
                return bytes(out)
            v = _B64_VALUE.get(c)
            if v is None:
                raise JsonError(f"illegal base64 data at input byte {si - 1}")
            quantum.append(v)
        bits = quantum[0] << 18 | quantum[1] << 12 | quantum[2] << 6 | quantum[3]
        out += bytes((bits >> 16 & 0xFF, bits >> 8 & 0xFF, bits & 0xFF))
    return bytes(out)


def _integer_in(value: Number, go_type: str, lo: int, hi: int) -> int:
    number: int | None
    try:
        number = int(value.text)
    except ValueError:
        number = None
    if number is None or not lo <= number <= hi or (number == 0 and value.text.startswith("-") and lo == 0):
        raise JsonError(f"json: cannot unmarshal number {value.text} into Go value of type {go_type}")
    return number


def _integer(value: Any, field: FieldDescriptor) -> int:
    go_type, lo, hi = _INT_TYPES[field.type]
    if isinstance(value, str) and go_type in ("int64", "uint64"):
        inner = value.strip(_WHITESPACE)
        if not inner:
            raise JsonError("unexpected end of JSON input")
        parsed, end = parse_value(inner)
        rest = inner[end:].lstrip(_WHITESPACE)
        if rest:
            raise JsonError(f"invalid character {_quote_char(rest[0])} after top-level value")
        value = parsed
    if not isinstance(value, Number):
        raise _cannot(value, go_type)
    return _integer_in(value, go_type, lo, hi)


def _scalar(value: Any, field: FieldDescriptor) -> Any:
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        if not isinstance(value, dict):
            raise _cannot(value, "map[string]json.RawMessage")
        return _normalize(value, field.message_type)
    if t == FieldDescriptor.TYPE_ENUM:
        if isinstance(value, str):
            enum_value = field.enum_type.values_by_name.get(value)
            if enum_value is None:
                raw = json.dumps(value)
                raise JsonError(f"unknown value {json.dumps(raw)} for enum {field.enum_type.full_name}")
            return enum_value.number
        if not isinstance(value, Number):
            raise _cannot(value, "protoreflect.EnumNumber")
        try:
            return int(value.text)
        except ValueError:
            raise JsonError(
                f"json: cannot unmarshal number {value.text} into Go value of type protoreflect.EnumNumber"
            ) from None
    if t == FieldDescriptor.TYPE_BYTES:
        if isinstance(value, list):  # Go decodes a []uint8 from an array of numbers too
            for element in value:
                if not isinstance(element, Number):
                    raise _cannot(element, "uint8")
            return bytes(_integer_in(element, "uint8", 0, 255) for element in value)
        if not isinstance(value, str):
            raise _cannot(value, "[]uint8")
        return _go_base64(value)
    if t == FieldDescriptor.TYPE_BOOL:
        if not isinstance(value, bool):
            raise _cannot(value, "bool")
        return value
    if t == FieldDescriptor.TYPE_STRING:
        if not isinstance(value, str):
            raise _cannot(value, "string")
        return value
    if t in _INT_TYPES:
        return _integer(value, field)
    if not isinstance(value, Number):  # float, double: not in etcd's API, kept for completeness
        raise _cannot(value, "float64")
    return float(value.text)


_FIELDS: dict[str, dict[str, FieldDescriptor]] = {}


def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by proto name and by JSON name (both are accepted), built once per type."""
    fields = _FIELDS.get(descriptor.full_name)
    if fields is None:
        fields = {f.json_name: f for f in descriptor.fields}
        fields.update({f.name: f for f in descriptor.fields})
        _FIELDS[descriptor.full_name] = fields
    return fields


def _normalize(obj: dict[str, Any], descriptor: Descriptor) -> dict[str, Any]:
    """Check obj against the message type; return it with Python values json_format takes."""
    fields = _fields(descriptor)
    out: dict[str, Any] = {}
    for name, value in obj.items():
        field = fields.get(name)
        if field is None or value is None:
            continue  # unknown fields are dropped, null is "unset", as etcd's gateway does
        if field.is_repeated:
            if not isinstance(value, list):
                raise _cannot(value, "[]json.RawMessage")
            out[field.name] = [_scalar(v, field) for v in value if v is not None]
        else:
            out[field.name] = _scalar(value, field)
    return out


def _to_json_ready(obj: Any) -> Any:
    """bytes -> base64 text for json_format.ParseDict (which expects JSON-shaped input)."""
    if isinstance(obj, dict):
        return {k: _to_json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_json_ready(v) for v in obj]
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode()
    return obj


_PLAIN: dict[str, bool] = {}
_NOT_PLAIN_TYPES = frozenset({FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_GROUP})


def _plain(descriptor: Descriptor) -> bool:
    """Whether json_format treats every field of this type (and of the types inside) as the direct
    paths below do: no floats (special values), maps or well-known types (their own JSON forms)."""
    known = _PLAIN.get(descriptor.full_name)
    if known is not None:
        return known
    _PLAIN[descriptor.full_name] = True  # a recursive type is plain unless another field says otherwise
    plain = not descriptor.full_name.startswith("google.protobuf.")
    for f in descriptor.fields:
        if f.type in _NOT_PLAIN_TYPES:
            plain = False
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            if f.message_type.GetOptions().map_entry or not _plain(f.message_type):
                plain = False
    _PLAIN[descriptor.full_name] = plain
    return plain


class _Fallback(Exception):
    """The direct fill met what only json_format decides (two members of a oneof)."""


def _fill(msg: Message, normalized: dict[str, Any]) -> None:
    """Set normalized's checked values on msg directly: what json_format.ParseDict does with them,
    without the base64 round trip and ParseDict's per-field interpretation."""
    fields = msg.DESCRIPTOR.fields_by_name
    oneofs: set[str] = set()
    for name, value in normalized.items():
        field = fields[name]
        if field.containing_oneof is not None:
            if field.containing_oneof.name in oneofs:
                raise _Fallback
            oneofs.add(field.containing_oneof.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if field.is_repeated:
                container = getattr(msg, name)
                for element in value:
                    _fill(container.add(), element)
            else:
                sub = getattr(msg, name)
                sub.SetInParent()  # present even when empty, as ParseDict makes it
                _fill(sub, value)
        elif field.is_repeated:
            getattr(msg, name).extend(value)
        else:
            setattr(msg, name, value)


def from_value(value: Any, message_type: type[Message]) -> Message:
    """A parsed JSON value (parse_value) as a request message; raises JsonError."""
    msg = message_type()
    if value is None:
        return msg
    if not isinstance(value, dict):
        raise _cannot(value, "map[string]json.RawMessage")
    normalized = _normalize(value, msg.DESCRIPTOR)
    if _plain(msg.DESCRIPTOR):
        try:
            _fill(msg, normalized)
            return msg
        except (_Fallback, ValueError, TypeError):
            msg.Clear()  # json_format decides (and words any error) as it always did
    json_format.ParseDict(_to_json_ready(normalized), msg)
    return msg


def decode(body: bytes, message_type: type[Message]) -> Message:
    """A request body as a message. An empty body is an empty request (etcd: io.EOF is not an error);
    anything after the first JSON value is ignored, as Go's stream decoder does."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        bad = _quote_char(chr(body[err.start]))
        raise JsonError(f"invalid character {bad} looking for beginning of value") from None
    if not text.strip(_WHITESPACE):
        return message_type()
    value, _ = parse_value(text)
    return from_value(value, message_type)


_INT64_TYPES = frozenset(t for t, (go_type, _, _) in _INT_TYPES.items() if go_type in ("int64", "uint64"))


def _json_of(field: FieldDescriptor, value: Any) -> Any:
    t = field.type
    if t == FieldDescriptor.TYPE_MESSAGE:
        return _dict_of(value)
    if t in _INT64_TYPES:
        return str(value)
    if t == FieldDescriptor.TYPE_BYTES:
        return base64.b64encode(value).decode()
    if t == FieldDescriptor.TYPE_ENUM:
        named = field.enum_type.values_by_number.get(value)
        return value if named is None else named.name
    return value  # bool, string, 32-bit integers


def _dict_of(msg: Message) -> dict[str, Any]:
    """MessageToDict(preserving_proto_field_name=True) for a plain type: the set fields in field-number
    order, int64 as strings, bytes as base64, enums by name (an unknown number as itself)."""
    out: dict[str, Any] = {}
    for field, value in msg.ListFields():
        if field.is_repeated:
            out[field.name] = [_json_of(field, v) for v in value]
        else:
            out[field.name] = _json_of(field, value)
    return out


def to_dict(msg: Message) -> dict[str, Any]:
    if _plain(msg.DESCRIPTOR):
        return _dict_of(msg)
    out: dict[str, Any] = json_format.MessageToDict(msg, preserving_proto_field_name=True)
    return out


_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps(obj: Any) -> bytes:
    """Compact JSON as Go's encoder writes it (UTF-8 kept, HTML characters escaped)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).translate(_GO_ESCAPES).encode()


def encode(msg: Message) -> bytes:
    """etcd's JSON for a response message."""
    return dumps(to_dict(msg))
