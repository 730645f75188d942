"""Schemas from the protobuf contracts: one source of truth for params
validation, result checking and the OpenRPC document.

`ParamSpec` is compiled once per method from its <Method>Params message; it
checks JSON values cheaply (type tags, no protobuf objects on the request
path).  `json_schema` turns a message descriptor into JSON Schema for
`rpc.discover`.
"""
from __future__ import annotations

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from ..errors import invalid_params

_FD = FieldDescriptor
_INTS = {_FD.TYPE_INT32, _FD.TYPE_INT64, _FD.TYPE_SINT32, _FD.TYPE_SINT64,
         _FD.TYPE_SFIXED32, _FD.TYPE_SFIXED64}
_UINTS = {_FD.TYPE_UINT32, _FD.TYPE_UINT64, _FD.TYPE_FIXED32, _FD.TYPE_FIXED64}
_FLOATS = {_FD.TYPE_DOUBLE, _FD.TYPE_FLOAT}
_WKT_ANY_JSON = {"google.protobuf.Value", "google.protobuf.Struct", "google.protobuf.ListValue"}
_INT64_LIMIT = 1 << 63
_NON_FINITE = ("NaN", "Infinity", "-Infinity")


def _is_map(field: FieldDescriptor) -> bool:
    return (field.type == _FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry)


def _type_name(field: FieldDescriptor) -> str:
    t = field.type
    if t in _INTS or t in _UINTS:
        return "integer"
    if t in _FLOATS:
        return "number"
    if t == _FD.TYPE_BOOL:
        return "boolean"
    if t in (_FD.TYPE_STRING, _FD.TYPE_BYTES):
        return "string"
    if t == _FD.TYPE_ENUM:
        return "string"
    return "object"


def _check_scalar(field: FieldDescriptor, value, where: str):
    t = field.type
    ok = True
    if t in _INTS or t in _UINTS:
        ok = type(value) is int and -_INT64_LIMIT <= value < (_INT64_LIMIT << 1)
        if ok and t in _UINTS and value < 0:
            raise invalid_params(f"{where} must be >= 0", param=where, expected="unsigned integer", got=value)
    elif t in _FLOATS:
        # proto3 JSON: a number, or one of the three strings for non-finite values.
        ok = type(value) in (int, float) or value in _NON_FINITE
    elif t == _FD.TYPE_BOOL:
        ok = type(value) is bool
    elif t in (_FD.TYPE_STRING, _FD.TYPE_BYTES):
        ok = type(value) is str
    elif t == _FD.TYPE_ENUM:
        ok = type(value) is str and field.enum_type.values_by_name.get(value) is not None
        if not ok:
            names = [v.name for v in field.enum_type.values]
            raise invalid_params(f"{where} must be one of {names}", param=where, expected=names, got=_show(value))
    elif t == _FD.TYPE_MESSAGE:
        full = field.message_type.full_name
        if full in _WKT_ANY_JSON:
            if full == "google.protobuf.Struct":
                ok = type(value) is dict
            elif full == "google.protobuf.ListValue":
                ok = type(value) is list
            return
        if type(value) is not dict:
            ok = False
        else:
            _check_message(field.message_type, value, where + ".")
    if not ok:
        raise invalid_params(f"{where} must be {_type_name(field)}", param=where,
                             expected=_type_name(field), got=_json_type(value))


def _check_field(field: FieldDescriptor, value, where: str):
    if _is_map(field):
        if type(value) is not dict:
            raise invalid_params(f"{where} must be object", param=where, expected="object", got=_json_type(value))
        vfield = field.message_type.fields_by_name["value"]
        for k, v in value.items():
            _check_scalar(vfield, v, f"{where}.{k}")
        return
    if field.is_repeated:
        if type(value) is not list:
            raise invalid_params(f"{where} must be array", param=where, expected="array", got=_json_type(value))
        for i, v in enumerate(value):
            _check_scalar(field, v, f"{where}[{i}]")
        return
    _check_scalar(field, value, where)


def _check_message(desc: Descriptor, obj: dict, prefix: str):
    fields = desc.fields_by_name
    for key, value in obj.items():
        f = fields.get(key)
        if f is None:
            raise invalid_params(f"unknown field {prefix}{key}", param=prefix + key,
                                 expected=sorted(fields))
        _check_field(f, value, prefix + key)


def _json_type(value) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) is int:
        return "integer"
    if type(value) is float:
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    return "object"


def _show(value):
    s = repr(value)
    return s if len(s) <= 80 else s[:77] + "..."


def _required(field: FieldDescriptor) -> bool:
    """A plain proto3 scalar (no `optional`) is a required param."""
    if field.is_repeated or field.type == _FD.TYPE_MESSAGE:
        return False
    return not field.has_presence


class ParamSpec:
    """Validates JSON-RPC params against a <Method>Params message."""

    __slots__ = ("descriptor", "names", "required", "fields")

    def __init__(self, descriptor: Descriptor | None):
        self.descriptor = descriptor
        if descriptor is None:
            self.names, self.required, self.fields = (), frozenset(), {}
            return
        ordered = sorted(descriptor.fields, key=lambda f: f.number)
        self.names = tuple(f.name for f in ordered)
        self.required = frozenset(f.name for f in ordered if _required(f))
        self.fields = {f.name: f for f in ordered}

    def bind(self, params) -> dict:
        """Turn positional or named params into a validated dict (raises RpcError -32602)."""
        if params is None:
            if not self.required:
                return {}
            params = {}
        elif type(params) is list:
            if len(params) > len(self.names):
                raise invalid_params(f"too many positional params: got {len(params)}, takes at most {len(self.names)}",
                                     expected=list(self.names))
            params = dict(zip(self.names, params))
        elif type(params) is not dict:
            raise invalid_params("params must be an array or an object")
        fields = self.fields
        for key, value in params.items():
            f = fields.get(key)
            if f is None:
                raise invalid_params(f"unknown param {key!r}", param=key, expected=list(self.names))
            if value is None and key not in self.required:
                continue
            _check_field(f, value, key)
        missing = self.required.difference(params)
        if missing:
            raise invalid_params(f"missing required param(s): {', '.join(sorted(missing))}",
                                 missing=sorted(missing))
        return {k: v for k, v in params.items() if v is not None}

    def content_descriptors(self, schemas: dict) -> list:
        if self.descriptor is None:
            return []
        return [{"name": f.name, "required": f.name in self.required,
                 "schema": field_schema(f, schemas)} for f in self.descriptor.fields]


def field_schema(field: FieldDescriptor, schemas: dict) -> dict:
    if _is_map(field):
        vfield = field.message_type.fields_by_name["value"]
        return {"type": "object", "additionalProperties": _scalar_schema(vfield, schemas)}
    if field.is_repeated:
        return {"type": "array", "items": _scalar_schema(field, schemas)}
    s = _scalar_schema(field, schemas)
    if field.has_presence and s:
        # proto3 JSON: null stands for "absent" on fields that track presence
        # (messages and `optional` scalars).
        if "type" in s and "enum" not in s:
            s = dict(s, type=[s["type"], "null"])
        else:
            s = {"anyOf": [s, {"type": "null"}]}
    return s


def _scalar_schema(field: FieldDescriptor, schemas: dict) -> dict:
    t = field.type
    if t == _FD.TYPE_MESSAGE:
        full = field.message_type.full_name
        if full == "google.protobuf.Struct":
            return {"type": "object"}
        if full == "google.protobuf.ListValue":
            return {"type": "array"}
        if full == "google.protobuf.Value":
            return {}
        return {"$ref": "#/components/schemas/" + json_schema(field.message_type, schemas)}
    if t == _FD.TYPE_ENUM:
        return {"type": "string", "enum": [v.name for v in field.enum_type.values]}
    s = {"type": _type_name(field)}
    if t in _UINTS:
        s["minimum"] = 0
    return s


def json_schema(desc: Descriptor, schemas: dict) -> str:
    """Add desc (and what it references) to `schemas`; return its key."""
    key = desc.full_name
    if key in schemas:
        return key
    schemas[key] = None  # placeholder: breaks recursion
    props = {f.name: field_schema(f, schemas) for f in desc.fields}
    schema = {"type": "object", "properties": props, "additionalProperties": False}
    schemas[key] = schema
    return key
