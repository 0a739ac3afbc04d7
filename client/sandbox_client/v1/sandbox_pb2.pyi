import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ErrorKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_KIND_UNSPECIFIED: _ClassVar[ErrorKind]
    ERROR_KIND_USER_ERROR: _ClassVar[ErrorKind]
    ERROR_KIND_TIMEOUT: _ClassVar[ErrorKind]
    ERROR_KIND_MEMORY_LIMIT: _ClassVar[ErrorKind]
    ERROR_KIND_RESOURCE_LIMIT: _ClassVar[ErrorKind]
    ERROR_KIND_OUTPUT_LIMIT: _ClassVar[ErrorKind]
    ERROR_KIND_RESULT_TOO_LARGE: _ClassVar[ErrorKind]
    ERROR_KIND_CRASHED: _ClassVar[ErrorKind]
    ERROR_KIND_POLICY_DENIED: _ClassVar[ErrorKind]
    ERROR_KIND_CANCELLED: _ClassVar[ErrorKind]
    ERROR_KIND_QUOTA_EXCEEDED: _ClassVar[ErrorKind]
    ERROR_KIND_INVALID_REQUEST: _ClassVar[ErrorKind]
    ERROR_KIND_UNAVAILABLE: _ClassVar[ErrorKind]
    ERROR_KIND_INTERNAL: _ClassVar[ErrorKind]
    ERROR_KIND_DEADLINE_EXCEEDED: _ClassVar[ErrorKind]

class ResultSelection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESULT_SELECTION_UNSPECIFIED: _ClassVar[ResultSelection]
    RESULT_SELECTION_ALL: _ClassVar[ResultSelection]
    RESULT_SELECTION_LAST: _ClassVar[ResultSelection]
    RESULT_SELECTION_NONE: _ClassVar[ResultSelection]
    RESULT_SELECTION_NAMED: _ClassVar[ResultSelection]

class LogLevel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_LEVEL_UNSPECIFIED: _ClassVar[LogLevel]
    LOG_LEVEL_DEBUG: _ClassVar[LogLevel]
    LOG_LEVEL_INFO: _ClassVar[LogLevel]
    LOG_LEVEL_WARN: _ClassVar[LogLevel]
    LOG_LEVEL_ERROR: _ClassVar[LogLevel]

class ExecutionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXECUTION_STATUS_UNSPECIFIED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_SUCCEEDED: _ClassVar[ExecutionStatus]
    EXECUTION_STATUS_FAILED: _ClassVar[ExecutionStatus]
ERROR_KIND_UNSPECIFIED: ErrorKind
ERROR_KIND_USER_ERROR: ErrorKind
ERROR_KIND_TIMEOUT: ErrorKind
ERROR_KIND_MEMORY_LIMIT: ErrorKind
ERROR_KIND_RESOURCE_LIMIT: ErrorKind
ERROR_KIND_OUTPUT_LIMIT: ErrorKind
ERROR_KIND_RESULT_TOO_LARGE: ErrorKind
ERROR_KIND_CRASHED: ErrorKind
ERROR_KIND_POLICY_DENIED: ErrorKind
ERROR_KIND_CANCELLED: ErrorKind
ERROR_KIND_QUOTA_EXCEEDED: ErrorKind
ERROR_KIND_INVALID_REQUEST: ErrorKind
ERROR_KIND_UNAVAILABLE: ErrorKind
ERROR_KIND_INTERNAL: ErrorKind
ERROR_KIND_DEADLINE_EXCEEDED: ErrorKind
RESULT_SELECTION_UNSPECIFIED: ResultSelection
RESULT_SELECTION_ALL: ResultSelection
RESULT_SELECTION_LAST: ResultSelection
RESULT_SELECTION_NONE: ResultSelection
RESULT_SELECTION_NAMED: ResultSelection
LOG_LEVEL_UNSPECIFIED: LogLevel
LOG_LEVEL_DEBUG: LogLevel
LOG_LEVEL_INFO: LogLevel
LOG_LEVEL_WARN: LogLevel
LOG_LEVEL_ERROR: LogLevel
EXECUTION_STATUS_UNSPECIFIED: ExecutionStatus
EXECUTION_STATUS_SUCCEEDED: ExecutionStatus
EXECUTION_STATUS_FAILED: ExecutionStatus

class Limits(_message.Message):
    __slots__ = ("timeout_ms", "cpu_time_ms", "memory_bytes", "pids", "open_files", "file_size_bytes", "tmpfs_bytes", "log_bytes", "result_bytes", "log_lines", "egress_connections", "egress_connect_timeout_ms", "egress_idle_timeout_ms", "egress_bytes_sent", "egress_bytes_received")
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PIDS_FIELD_NUMBER: _ClassVar[int]
    OPEN_FILES_FIELD_NUMBER: _ClassVar[int]
    FILE_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TMPFS_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOG_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOG_LINES_FIELD_NUMBER: _ClassVar[int]
    EGRESS_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_CONNECT_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    EGRESS_BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    timeout_ms: int
    cpu_time_ms: int
    memory_bytes: int
    pids: int
    open_files: int
    file_size_bytes: int
    tmpfs_bytes: int
    log_bytes: int
    result_bytes: int
    log_lines: int
    egress_connections: int
    egress_connect_timeout_ms: int
    egress_idle_timeout_ms: int
    egress_bytes_sent: int
    egress_bytes_received: int
    def __init__(self, timeout_ms: _Optional[int] = ..., cpu_time_ms: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., pids: _Optional[int] = ..., open_files: _Optional[int] = ..., file_size_bytes: _Optional[int] = ..., tmpfs_bytes: _Optional[int] = ..., log_bytes: _Optional[int] = ..., result_bytes: _Optional[int] = ..., log_lines: _Optional[int] = ..., egress_connections: _Optional[int] = ..., egress_connect_timeout_ms: _Optional[int] = ..., egress_idle_timeout_ms: _Optional[int] = ..., egress_bytes_sent: _Optional[int] = ..., egress_bytes_received: _Optional[int] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("name", "code", "limits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    code: str
    limits: Limits
    def __init__(self, name: _Optional[str] = ..., code: _Optional[str] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class EgressDestination(_message.Message):
    __slots__ = ("host", "ports")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    host: str
    ports: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, host: _Optional[str] = ..., ports: _Optional[_Iterable[int]] = ...) -> None: ...

class EgressPolicy(_message.Message):
    __slots__ = ("allow",)
    ALLOW_FIELD_NUMBER: _ClassVar[int]
    allow: _containers.RepeatedCompositeFieldContainer[EgressDestination]
    def __init__(self, allow: _Optional[_Iterable[_Union[EgressDestination, _Mapping]]] = ...) -> None: ...

class ExecuteRequest(_message.Message):
    __slots__ = ("tenant_id", "execution_id", "steps", "input", "config_vars", "credentials", "limits", "return_results", "return_steps", "egress")
    class ConfigVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class CredentialsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VARS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    RETURN_RESULTS_FIELD_NUMBER: _ClassVar[int]
    RETURN_STEPS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    execution_id: str
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    input: bytes
    config_vars: _containers.ScalarMap[str, str]
    credentials: _containers.ScalarMap[str, str]
    limits: Limits
    return_results: ResultSelection
    return_steps: _containers.RepeatedScalarFieldContainer[str]
    egress: EgressPolicy
    def __init__(self, tenant_id: _Optional[str] = ..., execution_id: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., input: _Optional[bytes] = ..., config_vars: _Optional[_Mapping[str, str]] = ..., credentials: _Optional[_Mapping[str, str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., return_results: _Optional[_Union[ResultSelection, str]] = ..., return_steps: _Optional[_Iterable[str]] = ..., egress: _Optional[_Union[EgressPolicy, _Mapping]] = ...) -> None: ...

class InputChunk(_message.Message):
    __slots__ = ("offset", "data", "last", "total_bytes", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    last: bool
    total_bytes: int
    sha256: bytes
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., last: bool = ..., total_bytes: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class ExecuteChunkedRequest(_message.Message):
    __slots__ = ("request", "input_chunk")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    INPUT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    request: ExecuteRequest
    input_chunk: InputChunk
    def __init__(self, request: _Optional[_Union[ExecuteRequest, _Mapping]] = ..., input_chunk: _Optional[_Union[InputChunk, _Mapping]] = ...) -> None: ...

class SessionOpen(_message.Message):
    __slots__ = ("tenant_id", "execution_id", "config_vars", "credentials", "limits", "idle_timeout_ms", "max_steps", "egress")
    class ConfigVarsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class CredentialsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_VARS_FIELD_NUMBER: _ClassVar[int]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    execution_id: str
    config_vars: _containers.ScalarMap[str, str]
    credentials: _containers.ScalarMap[str, str]
    limits: Limits
    idle_timeout_ms: int
    max_steps: int
    egress: EgressPolicy
    def __init__(self, tenant_id: _Optional[str] = ..., execution_id: _Optional[str] = ..., config_vars: _Optional[_Mapping[str, str]] = ..., credentials: _Optional[_Mapping[str, str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., idle_timeout_ms: _Optional[int] = ..., max_steps: _Optional[int] = ..., egress: _Optional[_Union[EgressPolicy, _Mapping]] = ...) -> None: ...

class SessionStep(_message.Message):
    __slots__ = ("name", "code", "input", "input_chunked", "keep_result", "limits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_CHUNKED_FIELD_NUMBER: _ClassVar[int]
    KEEP_RESULT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    code: str
    input: bytes
    input_chunked: bool
    keep_result: bool
    limits: Limits
    def __init__(self, name: _Optional[str] = ..., code: _Optional[str] = ..., input: _Optional[bytes] = ..., input_chunked: bool = ..., keep_result: bool = ..., limits: _Optional[_Union[Limits, _Mapping]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("open", "step", "input_chunk")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    INPUT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    open: SessionOpen
    step: SessionStep
    input_chunk: InputChunk
    def __init__(self, open: _Optional[_Union[SessionOpen, _Mapping]] = ..., step: _Optional[_Union[SessionStep, _Mapping]] = ..., input_chunk: _Optional[_Union[InputChunk, _Mapping]] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: ExecutionEvent
    def __init__(self, event: _Optional[_Union[ExecutionEvent, _Mapping]] = ...) -> None: ...

class ExecuteChunkedResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: ExecutionEvent
    def __init__(self, event: _Optional[_Union[ExecutionEvent, _Mapping]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: ExecutionEvent
    def __init__(self, event: _Optional[_Union[ExecutionEvent, _Mapping]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("tenant_id", "execution_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    execution_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., execution_id: _Optional[str] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("found",)
    FOUND_FIELD_NUMBER: _ClassVar[int]
    found: bool
    def __init__(self, found: bool = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Usage(_message.Message):
    __slots__ = ("duration_us", "cpu_time_us", "peak_memory_bytes", "egress_bytes_sent", "egress_bytes_received", "egress_connections", "egress_denied")
    DURATION_US_FIELD_NUMBER: _ClassVar[int]
    CPU_TIME_US_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    EGRESS_BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    EGRESS_BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    EGRESS_CONNECTIONS_FIELD_NUMBER: _ClassVar[int]
    EGRESS_DENIED_FIELD_NUMBER: _ClassVar[int]
    duration_us: int
    cpu_time_us: int
    peak_memory_bytes: int
    egress_bytes_sent: int
    egress_bytes_received: int
    egress_connections: int
    egress_denied: int
    def __init__(self, duration_us: _Optional[int] = ..., cpu_time_us: _Optional[int] = ..., peak_memory_bytes: _Optional[int] = ..., egress_bytes_sent: _Optional[int] = ..., egress_bytes_received: _Optional[int] = ..., egress_connections: _Optional[int] = ..., egress_denied: _Optional[int] = ...) -> None: ...

class ExecutionStarted(_message.Message):
    __slots__ = ("tenant_id", "step_count", "attempt", "lease_wait_us")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_COUNT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    LEASE_WAIT_US_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    step_count: int
    attempt: int
    lease_wait_us: int
    def __init__(self, tenant_id: _Optional[str] = ..., step_count: _Optional[int] = ..., attempt: _Optional[int] = ..., lease_wait_us: _Optional[int] = ...) -> None: ...

class StepStarted(_message.Message):
    __slots__ = ("step", "index")
    STEP_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    step: str
    index: int
    def __init__(self, step: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class Log(_message.Message):
    __slots__ = ("step", "level", "text", "time", "truncated")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    step: str
    level: LogLevel
    text: str
    time: _timestamp_pb2.Timestamp
    truncated: bool
    def __init__(self, step: _Optional[str] = ..., level: _Optional[_Union[LogLevel, str]] = ..., text: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., truncated: bool = ...) -> None: ...

class StepFinished(_message.Message):
    __slots__ = ("step", "index", "json", "binary", "result_bytes", "usage", "kept", "result_chunks")
    STEP_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    JSON_FIELD_NUMBER: _ClassVar[int]
    BINARY_FIELD_NUMBER: _ClassVar[int]
    RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    RESULT_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    step: str
    index: int
    json: bytes
    binary: bytes
    result_bytes: int
    usage: Usage
    kept: bool
    result_chunks: int
    def __init__(self, step: _Optional[str] = ..., index: _Optional[int] = ..., json: _Optional[bytes] = ..., binary: _Optional[bytes] = ..., result_bytes: _Optional[int] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., kept: bool = ..., result_chunks: _Optional[int] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("step", "index", "data", "binary")
    STEP_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    BINARY_FIELD_NUMBER: _ClassVar[int]
    step: str
    index: int
    data: bytes
    binary: bool
    def __init__(self, step: _Optional[str] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ..., binary: bool = ...) -> None: ...

class StepFailed(_message.Message):
    __slots__ = ("step", "index", "kind", "message", "stack")
    STEP_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STACK_FIELD_NUMBER: _ClassVar[int]
    step: str
    index: int
    kind: ErrorKind
    message: str
    stack: str
    def __init__(self, step: _Optional[str] = ..., index: _Optional[int] = ..., kind: _Optional[_Union[ErrorKind, str]] = ..., message: _Optional[str] = ..., stack: _Optional[str] = ...) -> None: ...

class ExecutionFinished(_message.Message):
    __slots__ = ("status", "error_kind", "error_message", "failed_step", "steps_completed", "usage")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FAILED_STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_COMPLETED_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    status: ExecutionStatus
    error_kind: ErrorKind
    error_message: str
    failed_step: str
    steps_completed: int
    usage: Usage
    def __init__(self, status: _Optional[_Union[ExecutionStatus, str]] = ..., error_kind: _Optional[_Union[ErrorKind, str]] = ..., error_message: _Optional[str] = ..., failed_step: _Optional[str] = ..., steps_completed: _Optional[int] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class ExecutionEvent(_message.Message):
    __slots__ = ("execution_id", "seq", "time", "execution_started", "step_started", "log", "step_finished", "step_failed", "execution_finished", "result_chunk")
    EXECUTION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_STARTED_FIELD_NUMBER: _ClassVar[int]
    STEP_STARTED_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    STEP_FINISHED_FIELD_NUMBER: _ClassVar[int]
    STEP_FAILED_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_FINISHED_FIELD_NUMBER: _ClassVar[int]
    RESULT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    execution_id: str
    seq: int
    time: _timestamp_pb2.Timestamp
    execution_started: ExecutionStarted
    step_started: StepStarted
    log: Log
    step_finished: StepFinished
    step_failed: StepFailed
    execution_finished: ExecutionFinished
    result_chunk: ResultChunk
    def __init__(self, execution_id: _Optional[str] = ..., seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., execution_started: _Optional[_Union[ExecutionStarted, _Mapping]] = ..., step_started: _Optional[_Union[StepStarted, _Mapping]] = ..., log: _Optional[_Union[Log, _Mapping]] = ..., step_finished: _Optional[_Union[StepFinished, _Mapping]] = ..., step_failed: _Optional[_Union[StepFailed, _Mapping]] = ..., execution_finished: _Optional[_Union[ExecutionFinished, _Mapping]] = ..., result_chunk: _Optional[_Union[ResultChunk, _Mapping]] = ...) -> None: ...

class PoolStatus(_message.Message):
    __slots__ = ("warm", "leased", "starting", "failed", "target", "started", "start_ms_p50", "start_ms_p99")
    WARM_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    STARTING_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    START_MS_P50_FIELD_NUMBER: _ClassVar[int]
    START_MS_P99_FIELD_NUMBER: _ClassVar[int]
    warm: int
    leased: int
    starting: int
    failed: int
    target: int
    started: int
    start_ms_p50: float
    start_ms_p99: float
    def __init__(self, warm: _Optional[int] = ..., leased: _Optional[int] = ..., starting: _Optional[int] = ..., failed: _Optional[int] = ..., target: _Optional[int] = ..., started: _Optional[int] = ..., start_ms_p50: _Optional[float] = ..., start_ms_p99: _Optional[float] = ...) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("version", "serving", "pool", "executions_by_outcome", "running", "cgroup_mode", "seccomp", "uptime_s", "load_1m", "cpu_percent", "memory_available_bytes", "daemon_rss_bytes", "tenants", "queue", "transport_security")
    class ExecutionsByOutcomeEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class TenantsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: TenantLoad
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[TenantLoad, _Mapping]] = ...) -> None: ...
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    EXECUTIONS_BY_OUTCOME_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    CGROUP_MODE_FIELD_NUMBER: _ClassVar[int]
    SECCOMP_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    LOAD_1M_FIELD_NUMBER: _ClassVar[int]
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_AVAILABLE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DAEMON_RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_SECURITY_FIELD_NUMBER: _ClassVar[int]
    version: str
    serving: bool
    pool: PoolStatus
    executions_by_outcome: _containers.ScalarMap[str, int]
    running: int
    cgroup_mode: str
    seccomp: bool
    uptime_s: float
    load_1m: float
    cpu_percent: float
    memory_available_bytes: int
    daemon_rss_bytes: int
    tenants: _containers.MessageMap[str, TenantLoad]
    queue: QueueStatus
    transport_security: str
    def __init__(self, version: _Optional[str] = ..., serving: bool = ..., pool: _Optional[_Union[PoolStatus, _Mapping]] = ..., executions_by_outcome: _Optional[_Mapping[str, int]] = ..., running: _Optional[int] = ..., cgroup_mode: _Optional[str] = ..., seccomp: bool = ..., uptime_s: _Optional[float] = ..., load_1m: _Optional[float] = ..., cpu_percent: _Optional[float] = ..., memory_available_bytes: _Optional[int] = ..., daemon_rss_bytes: _Optional[int] = ..., tenants: _Optional[_Mapping[str, TenantLoad]] = ..., queue: _Optional[_Union[QueueStatus, _Mapping]] = ..., transport_security: _Optional[str] = ...) -> None: ...

class QueueStatus(_message.Message):
    __slots__ = ("worker_id", "connected", "running", "taken", "disconnects", "last_error")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    TAKEN_FIELD_NUMBER: _ClassVar[int]
    DISCONNECTS_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    connected: bool
    running: int
    taken: int
    disconnects: int
    last_error: str
    def __init__(self, worker_id: _Optional[str] = ..., connected: bool = ..., running: _Optional[int] = ..., taken: _Optional[int] = ..., disconnects: _Optional[int] = ..., last_error: _Optional[str] = ...) -> None: ...

class TenantLoad(_message.Message):
    __slots__ = ("running", "queued")
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    running: int
    queued: int
    def __init__(self, running: _Optional[int] = ..., queued: _Optional[int] = ...) -> None: ...
