"""Contract drift: the exchange's own descriptors, asked for by gRPC server reflection,
against the contract the bridge was compiled with (`proto/polymarket/v1`).

Only `polybridge check` uses this: the bridge itself never depends on reflection (a server
may not offer it, or only in some environments); fields it does not know reach Kafka anyway,
as raw bytes in `unknown_fields`.

`served_files` speaks the reflection protocol (`grpc.reflection.v1`, then `v1alpha`, whose
messages are the same; grpcio-reflection ships them) and returns the file descriptors the
server gives for the DropCopy service and everything they import, or None when the server
offers no reflection. `compare` walks the messages reachable from the service's methods on
both sides and returns one `Drift` per message field that differs by name, number or type.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pb2

from polymarket.v1 import dropcopy_pb2

SERVICE = "polymarket.v1.DropCopyAPI"
REFLECTION_SERVICES = (
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
)
"""Tried in this order; v1alpha is what grpcio-reflection (Python) serves."""

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in _F.Type.items()
    if name not in ("TYPE_MESSAGE", "TYPE_ENUM", "TYPE_GROUP")
}


class ReflectionError(Exception):
    """The server offers reflection but it did not describe the contract."""


@dataclass(frozen=True, slots=True)
class Drift:
    """One field on which the exchange's contract and the compiled one differ."""

    message: str
    number: int
    upstream: tuple[str, str] | None
    """(name, type) on the exchange; None when the exchange lacks the field."""
    compiled: tuple[str, str] | None
    """(name, type) in the compiled contract; None when it lacks the field."""

    @property
    def conflict(self) -> bool:
        """Both sides have the number with different types: the bridge would decode the
        exchange's values wrongly. (An addition is kept raw; a rename or a removal decodes.)"""
        return (
            self.upstream is not None
            and self.compiled is not None
            and self.upstream[1] != self.compiled[1]
        )

    def line(self) -> str:
        where = f"{self.message} field {self.number}"
        if self.compiled is None:
            assert self.upstream is not None
            name, type_ = self.upstream
            return f"{where} {name} ({type_}): the compiled contract lacks it"
        if self.upstream is None:
            name, type_ = self.compiled
            return f"{where} {name} ({type_}): in the compiled contract, not on the exchange"
        (up_name, up_type), (name, type_) = self.upstream, self.compiled
        return (
            f"{where}: the exchange has {up_name} ({up_type}), the compiled contract "
            f"{name} ({type_})"
        )


def compiled_files() -> list[descriptor_pb2.FileDescriptorProto]:
    """The compiled contract: the DropCopy file and every file it imports, transitively."""
    found: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def add(file: Any) -> None:
        if file.name in found:
            return
        proto = descriptor_pb2.FileDescriptorProto()
        file.CopyToProto(proto)
        found[file.name] = proto
        for dependency in file.dependencies:
            add(dependency)

    add(dropcopy_pb2.DESCRIPTOR)
    return list(found.values())


async def served_files(
    channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]], timeout_s: float
) -> list[descriptor_pb2.FileDescriptorProto] | None:
    """The server's file descriptors for the DropCopy service and its imports, or None when
    it offers no reflection (UNIMPLEMENTED). Other call errors propagate
    (`grpc.aio.AioRpcError`); `ReflectionError` when the server does not describe it.

    `ServerReflectionInfo` is a bidirectional stream, but every request stands alone and has
    exactly one answer: each is sent as its own call of one request and one response (on the
    wire, a stream with one message each way). A stream kept open for several requests would
    race a server that refuses the method at once: a write after its UNIMPLEMENTED fails as
    INTERNAL, hiding that reflection is simply not offered.
    """
    from grpc_reflection.v1alpha import reflection_pb2 as pb

    for service in REFLECTION_SERVICES:
        method = channel.unary_unary(
            f"/{service}/ServerReflectionInfo",
            request_serializer=pb.ServerReflectionRequest.SerializeToString,
            response_deserializer=pb.ServerReflectionResponse.FromString,
        )
        call = (tuple(metadata), timeout_s)
        try:
            first = await _ask(
                method, pb.ServerReflectionRequest(file_containing_symbol=SERVICE), call
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                continue
            raise
        files = _add({}, first)
        # Servers may answer with the file alone: ask for every import not given yet.
        while missing := sorted({d for f in files.values() for d in f.dependency} - set(files)):
            request = pb.ServerReflectionRequest(file_by_filename=missing[0])
            _add(files, await _ask(method, request, call))
        return list(files.values())
    return None


async def _ask(method: Any, request: Any, call: tuple[Any, float]) -> Any:
    metadata, timeout_s = call
    response = await method(request, metadata=metadata, timeout=timeout_s)
    if response.HasField("error_response"):
        error = response.error_response
        what = request.file_containing_symbol or request.file_by_filename
        raise ReflectionError(
            f"reflection has no descriptor for {what} "
            f"(code {error.error_code}: {error.error_message})"
        )
    return response


def _add(
    files: dict[str, descriptor_pb2.FileDescriptorProto], response: Any
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    for raw in response.file_descriptor_response.file_descriptor_proto:
        file = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files.setdefault(file.name, file)
    return files


def _index(
    files: Iterable[descriptor_pb2.FileDescriptorProto],
) -> tuple[
    dict[str, descriptor_pb2.DescriptorProto], dict[str, descriptor_pb2.ServiceDescriptorProto]
]:
    """Messages (nested ones too) and services by full name (no leading dot)."""
    messages: dict[str, descriptor_pb2.DescriptorProto] = {}
    services: dict[str, descriptor_pb2.ServiceDescriptorProto] = {}

    def add(prefix: str, message: descriptor_pb2.DescriptorProto) -> None:
        name = f"{prefix}.{message.name}" if prefix else message.name
        messages[name] = message
        for nested in message.nested_type:
            add(name, nested)

    for file in files:
        for message in file.message_type:
            add(file.package, message)
        for service in file.service:
            services[f"{file.package}.{service.name}" if file.package else service.name] = service
    return messages, services


def _type(field: descriptor_pb2.FieldDescriptorProto, messages: dict[str, Any]) -> str:
    """`bool`, `polymarket.v1.Order`, `repeated polymarket.v1.LegPrice`, `map<string, string>`."""
    if field.type in (_F.TYPE_MESSAGE, _F.TYPE_ENUM, _F.TYPE_GROUP):
        name = field.type_name.lstrip(".")
        entry = messages.get(name)
        if entry is not None and entry.options.map_entry:
            key, value = sorted(entry.field, key=lambda f: f.number)
            return f"map<{_type(key, messages)}, {_type(value, messages)}>"
    else:
        name = _SCALARS.get(field.type, f"type {field.type}")
    return f"repeated {name}" if field.label == _F.LABEL_REPEATED else name


def _reachable(
    messages: dict[str, descriptor_pb2.DescriptorProto],
    services: dict[str, descriptor_pb2.ServiceDescriptorProto],
) -> set[str]:
    """Messages reachable from the DropCopy service's requests and responses."""
    service = services.get(SERVICE)
    if service is None:
        return set()
    todo = [n.lstrip(".") for m in service.method for n in (m.input_type, m.output_type)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen or name not in messages:
            continue
        seen.add(name)
        todo += [
            f.type_name.lstrip(".")
            for f in messages[name].field
            if f.type in (_F.TYPE_MESSAGE, _F.TYPE_GROUP)
        ]
    return seen


def compare(
    served: Iterable[descriptor_pb2.FileDescriptorProto],
    compiled: Iterable[descriptor_pb2.FileDescriptorProto] | None = None,
) -> list[Drift]:
    """Every field of a message reachable from the DropCopy service (on either side) that the
    compiled contract lacks, that the exchange lacks, or that differs in name or type.
    Map entries are compared as the map's type; protobuf's own messages are skipped."""
    up_messages, up_services = _index(served)
    our_messages, our_services = _index(compiled if compiled is not None else compiled_files())
    if SERVICE not in up_services:
        raise ReflectionError(f"the exchange's descriptors have no service {SERVICE}")
    names = _reachable(up_messages, up_services) | _reachable(our_messages, our_services)
    drifts: list[Drift] = []
    for name in sorted(names):
        if name.startswith("google.protobuf.") or _is_map_entry(name, up_messages, our_messages):
            continue
        up = _fields(up_messages.get(name), up_messages)
        ours = _fields(our_messages.get(name), our_messages)
        for number in sorted(up.keys() | ours.keys()):
            if up.get(number) != ours.get(number):
                drifts.append(Drift(name, number, up.get(number), ours.get(number)))
    return drifts


def _is_map_entry(name: str, *indexes: dict[str, descriptor_pb2.DescriptorProto]) -> bool:
    return any(name in index and index[name].options.map_entry for index in indexes)


def _fields(
    message: descriptor_pb2.DescriptorProto | None, messages: dict[str, Any]
) -> dict[int, tuple[str, str]]:
    if message is None:
        return {}
    return {f.number: (f.name, _type(f, messages)) for f in message.field}
