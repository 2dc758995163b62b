from cai.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JsonReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: bytes
    def __init__(self, json: _Optional[bytes] = ...) -> None: ...

class CreateThreadRequest(_message.Message):
    __slots__ = ("principal", "thread_id", "metadata_json", "if_exists")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    IF_EXISTS_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    metadata_json: bytes
    if_exists: str
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ..., metadata_json: _Optional[bytes] = ..., if_exists: _Optional[str] = ...) -> None: ...

class GetThreadRequest(_message.Message):
    __slots__ = ("principal", "thread_id")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ...) -> None: ...

class GetThreadStateRequest(_message.Message):
    __slots__ = ("principal", "thread_id", "checkpoint_id")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    checkpoint_id: str
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ..., checkpoint_id: _Optional[str] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("principal", "thread_id", "assistant_id", "input_json", "command_json", "config_json", "metadata_json", "stream_modes", "multitask_strategy", "idempotency_key", "if_not_exists", "on_disconnect", "stream_resumable", "trace_context")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    COMMAND_JSON_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    STREAM_MODES_FIELD_NUMBER: _ClassVar[int]
    MULTITASK_STRATEGY_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    IF_NOT_EXISTS_FIELD_NUMBER: _ClassVar[int]
    ON_DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    STREAM_RESUMABLE_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    assistant_id: str
    input_json: bytes
    command_json: bytes
    config_json: bytes
    metadata_json: bytes
    stream_modes: _containers.RepeatedScalarFieldContainer[str]
    multitask_strategy: str
    idempotency_key: str
    if_not_exists: str
    on_disconnect: str
    stream_resumable: bool
    trace_context: _containers.ScalarMap[str, str]
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ..., assistant_id: _Optional[str] = ..., input_json: _Optional[bytes] = ..., command_json: _Optional[bytes] = ..., config_json: _Optional[bytes] = ..., metadata_json: _Optional[bytes] = ..., stream_modes: _Optional[_Iterable[str]] = ..., multitask_strategy: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., if_not_exists: _Optional[str] = ..., on_disconnect: _Optional[str] = ..., stream_resumable: _Optional[bool] = ..., trace_context: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("principal", "thread_id", "run_id")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    run_id: str
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("principal", "thread_id", "limit", "offset", "status")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    limit: int
    offset: int
    status: str
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class StreamRunRequest(_message.Message):
    __slots__ = ("principal", "thread_id", "run_id", "after_event_id", "cancel_on_disconnect")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    CANCEL_ON_DISCONNECT_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    run_id: str
    after_event_id: str
    cancel_on_disconnect: bool
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ..., run_id: _Optional[str] = ..., after_event_id: _Optional[str] = ..., cancel_on_disconnect: _Optional[bool] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("id", "event", "data")
    ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    id: str
    event: str
    data: bytes
    def __init__(self, id: _Optional[str] = ..., event: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class StreamRunReply(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[RunEvent]
    def __init__(self, events: _Optional[_Iterable[_Union[RunEvent, _Mapping]]] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("principal", "thread_id", "run_id", "action", "wait")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    run_id: str
    action: str
    wait: bool
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ..., run_id: _Optional[str] = ..., action: _Optional[str] = ..., wait: _Optional[bool] = ...) -> None: ...

class CancelRunsRequest(_message.Message):
    __slots__ = ("principal", "thread_id", "run_ids", "status", "action")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    RUN_IDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    run_ids: _containers.RepeatedScalarFieldContainer[str]
    status: str
    action: str
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ..., run_ids: _Optional[_Iterable[str]] = ..., status: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class SearchThreadsRequest(_message.Message):
    __slots__ = ("principal", "metadata_json", "status", "limit", "offset", "thread_ids")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    THREAD_IDS_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    metadata_json: bytes
    status: str
    limit: int
    offset: int
    thread_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., metadata_json: _Optional[bytes] = ..., status: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ..., thread_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UpdateThreadRequest(_message.Message):
    __slots__ = ("principal", "thread_id", "metadata_json")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    metadata_json: bytes
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ..., metadata_json: _Optional[bytes] = ...) -> None: ...

class GetThreadHistoryRequest(_message.Message):
    __slots__ = ("principal", "thread_id", "limit", "before_checkpoint_id")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    BEFORE_CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    limit: int
    before_checkpoint_id: str
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ..., limit: _Optional[int] = ..., before_checkpoint_id: _Optional[str] = ...) -> None: ...

class UpdateThreadStateRequest(_message.Message):
    __slots__ = ("principal", "thread_id", "values_json", "as_node", "checkpoint_id")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    THREAD_ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_JSON_FIELD_NUMBER: _ClassVar[int]
    AS_NODE_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    thread_id: str
    values_json: bytes
    as_node: str
    checkpoint_id: str
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., thread_id: _Optional[str] = ..., values_json: _Optional[bytes] = ..., as_node: _Optional[str] = ..., checkpoint_id: _Optional[str] = ...) -> None: ...

class SearchAssistantsRequest(_message.Message):
    __slots__ = ("principal", "metadata_json", "graph_id", "limit", "offset")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    GRAPH_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    metadata_json: bytes
    graph_id: str
    limit: int
    offset: int
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., metadata_json: _Optional[bytes] = ..., graph_id: _Optional[str] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class GetAssistantRequest(_message.Message):
    __slots__ = ("principal", "assistant_id")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_ID_FIELD_NUMBER: _ClassVar[int]
    principal: _common_pb2.Principal
    assistant_id: str
    def __init__(self, principal: _Optional[_Union[_common_pb2.Principal, _Mapping]] = ..., assistant_id: _Optional[str] = ...) -> None: ...
