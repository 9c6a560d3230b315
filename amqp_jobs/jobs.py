"""Job definitions: a function (or a service method) plus its schemas and options."""

from __future__ import annotations

import hashlib
import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pydantic

from amqp_jobs.errors import ConfigurationError, ValidationError
from amqp_jobs.retries import RetryPolicy

if TYPE_CHECKING:
    from amqp_jobs.app import JobApp
    from amqp_jobs.client import JobHandle
    from amqp_jobs.pipelines import Signature

_NO_OUTPUT = (inspect.Signature.empty, None, type(None))

DEFAULT_IDEMPOTENCY_WINDOW = 86_400.0
"""Seconds an idempotency key holds by default (one day)."""

ANY_ADAPTER: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(Any)
"""Dumps untyped values to JSON-ready data; made once (building an adapter is costly)."""


@dataclass(slots=True)
class JobDefinition:
    """Everything the app knows about one job.

    ``input_model`` validates the job's data; when the function takes plain
    parameters instead of one model, a model is built from them and the function
    is called with keyword arguments (``unpack_input``).
    """

    name: str
    fn: Callable[..., Any]
    queue: str
    input_model: type[pydantic.BaseModel]
    output_adapter: pydantic.TypeAdapter[Any] | None
    takes_context: bool
    unpack_input: bool
    is_async: bool
    retry: RetryPolicy
    timeout: float | None = None
    priority: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    idempotency: Callable[[pydantic.BaseModel], str] | None = None
    idempotency_window: float = DEFAULT_IDEMPOTENCY_WINDOW
    output_type: Any = None  # the return annotation; None when the job declares none
    on_success: tuple[str, ...] = ()  # jobs dispatched with the output when this succeeds
    on_failure: tuple[str, ...] = ()  # jobs dispatched with a JobFailure when this is dead

    def idempotency_key_of(self, data: pydantic.BaseModel) -> str | None:
        """The idempotency key of validated input ``data`` ("<job>:<key>"), if the job has one."""
        return None if self.idempotency is None else f"{self.name}:{self.idempotency(data)}"

    def validate_input(self, data: Any) -> pydantic.BaseModel:
        """Validate job data (a model instance or plain data) against the input schema."""
        if isinstance(data, self.input_model):
            return data
        if isinstance(data, pydantic.BaseModel):
            data = data.model_dump()
        if data is None and self.unpack_input:
            data = {}  # a job of plain parameters, all defaulted (or none)
        try:
            return self.input_model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"input of job {self.name!r} is invalid: {_summarise(exc)}"
            ) from None

    def validate_output(self, value: Any) -> Any:
        """Validate what the job returned against its return annotation."""
        if self.output_adapter is None:
            return value
        try:
            return self.output_adapter.validate_python(value)
        except pydantic.ValidationError as exc:
            raise ValidationError(
                f"job {self.name!r} returned a value that does not fit its return annotation: "
                f"{_summarise(exc)}"
            ) from None

    def dump_output(self, value: Any) -> Any:
        """JSON-ready form of a validated output."""
        if self.output_adapter is None:
            return ANY_ADAPTER.dump_python(value, mode="json")
        return self.output_adapter.dump_python(value, mode="json")

    def input_schema(self) -> dict[str, Any]:
        """JSON Schema of the job's input."""
        return self.input_model.model_json_schema()

    def output_schema(self) -> dict[str, Any] | None:
        """JSON Schema of the job's output, or None when it declares none."""
        return None if self.output_adapter is None else self.output_adapter.json_schema()


IdempotencyKey = tuple[str, ...] | Callable[[Any], Any] | bool | None
"""``@app.job(idempotency_key=...)``: field names, a function of the input, or True (all)."""


def idempotency_function(
    name: str, spec: IdempotencyKey, model: type[pydantic.BaseModel]
) -> Callable[[pydantic.BaseModel], str] | None:
    """Turn an ``idempotency_key`` option into a function of the validated input."""
    if spec is None or spec is False:
        return None
    if spec is True:
        # A canonical hash of the whole input: equal data, equal key.
        return lambda data: hashlib.sha256(
            json.dumps(data.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()
    if callable(spec):
        function = spec
        return lambda data: str(function(data))
    fields = tuple(spec)
    unknown = [f for f in fields if f not in model.model_fields]
    if unknown or not fields:
        raise ConfigurationError(
            f"job {name!r}: idempotency_key names {unknown or 'no'} field(s); the input has "
            f"{sorted(model.model_fields)}"
        )
    return lambda data: json.dumps(
        [data.model_dump(mode="json")[f] for f in fields], separators=(",", ":")
    )


def _summarise(exc: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'data'}: {err['msg']}"
        for err in exc.errors(include_url=False)[:5]
    )


def introspect(
    name: str,
    fn: Callable[..., Any],
    *,
    queue: str,
    retry: RetryPolicy,
    timeout: float | None,
    priority: int | None,
    options: dict[str, Any],
) -> JobDefinition:
    """Build a :class:`JobDefinition` from a function's signature and annotations.

    Accepted shapes: ``fn(ctx, data: Model)``, ``fn(data: Model)``, and functions of
    plain annotated parameters ``fn(ctx, user_id: int, note: str = "")``. A first
    parameter annotated ``JobContext`` (or named ``ctx``) receives the context.
    """
    from amqp_jobs.context import JobContext  # context imports this module's users

    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # unresolvable forward references
        raise ConfigurationError(f"job {name!r}: cannot resolve annotations ({exc})") from None
    params = list(inspect.signature(fn).parameters.values())
    takes_context = bool(params) and (
        hints.get(params[0].name) is JobContext or params[0].name in ("ctx", "context")
    )
    data_params = params[1:] if takes_context else params
    for p in data_params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ConfigurationError(f"job {name!r}: *args and **kwargs cannot be job inputs")

    single = data_params[0] if len(data_params) == 1 else None
    single_type = hints.get(single.name) if single is not None else None
    if isinstance(single_type, type) and issubclass(single_type, pydantic.BaseModel):
        input_model: type[pydantic.BaseModel] = single_type
        unpack = False
    else:
        fields: dict[str, Any] = {}
        for p in data_params:
            if p.name not in hints:
                raise ConfigurationError(
                    f"job {name!r}: parameter {p.name!r} needs a type annotation "
                    "(it becomes part of the job's input schema)"
                )
            default = ... if p.default is inspect.Parameter.empty else p.default
            fields[p.name] = (hints[p.name], default)
        model_name = "".join(part.title() for part in name.replace(".", "_").split("_")) + "Input"
        input_model = pydantic.create_model(model_name, **fields)
        unpack = True

    returns = hints.get("return", inspect.Signature.empty)
    output = None if returns in _NO_OUTPUT else pydantic.TypeAdapter(returns)
    return JobDefinition(
        name=name,
        fn=fn,
        queue=queue,
        input_model=input_model,
        output_adapter=output,
        takes_context=takes_context,
        unpack_input=unpack,
        is_async=inspect.iscoroutinefunction(fn),
        retry=retry,
        timeout=timeout,
        priority=priority,
        options=options,
        output_type=None if returns in _NO_OUTPUT else returns,
    )


class Job:
    """What ``@app.job`` returns: call it directly like the function, or ``enqueue`` it."""

    def __init__(self, definition: JobDefinition, app: JobApp) -> None:
        self.definition = definition
        self.app = app
        self.__doc__ = definition.fn.__doc__
        self.__name__ = getattr(definition.fn, "__name__", definition.name)

    @property
    def name(self) -> str:
        """The job's name, the one publishers use."""
        return self.definition.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.definition.fn(*args, **kwargs)

    async def enqueue(self, data: Any = None, **options: Any) -> JobHandle:
        """Publish this job; options as :meth:`amqp_jobs.app.JobApp.enqueue`."""
        return await self.app.enqueue(self.definition.name, data, **options)

    def s(self, data: Any = None, **options: Any) -> Signature:
        """A step for :func:`amqp_jobs.pipelines.chain`: this job, its data (first step
        only; later steps receive the previous output) and enqueue options."""
        from amqp_jobs.pipelines import Signature

        return Signature(self, data, options)

    def __repr__(self) -> str:
        return f"<Job {self.definition.name} queue={self.definition.queue}>"
