"""Result tools, their validation, and the actions results drive.

A *result tool* is a function the agent's model may call during a call to report what the
callee said: ``confirm_appointment {"status": "confirmed" | "cancelled" | "reschedule",
"notes"?: str}``. The agent registers the tools with the platform, checks each call's
arguments against the tool's JSON schema (answering the model with a readable error when they
do not match), and hands the results over on the call's end
(:attr:`~dispatch.abc.CallEnd.results`). The hub commits them with the outcome, delivers
``on_result`` before ``on_completed``, and lets them decide the record's next step
(:class:`ResultAction`): add the number to the do-not-call list, call back at a time, or
nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import TYPE_CHECKING, Any

from .abc import CallResult

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

__all__ = ["ActionKind", "ResultAction", "ResultTool"]  # and, for the hub, Action, decide_action

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResultTool:
    """A tool the agent's model calls to report an answer. ``parameters`` is a JSON schema
    (an ``object`` schema, as for any function-calling model)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )

    def __post_init__(self) -> None:
        from jsonschema import SchemaError

        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"result tool name {self.name!r}: use letters, digits, _ and -")
        if self.parameters.get("type", "object") != "object":
            raise ValueError(f"result tool {self.name}: parameters must be an object schema")
        try:
            self._validator  # noqa: B018 - checks the schema itself now, not at the first call
        except SchemaError as exc:
            raise ValueError(f"result tool {self.name}: invalid schema: {exc.message}") from None

    @cached_property
    def _validator(self) -> Validator:
        from jsonschema.validators import validator_for

        schema = dict(self.parameters)
        cls = validator_for(schema)
        cls.check_schema(schema)
        return cls(schema)

    def errors(self, arguments: object) -> list[str]:
        """Why ``arguments`` do not match the schema (empty when they do), each naming the
        argument, in words a model can act on."""
        if not isinstance(arguments, Mapping):
            return [f"arguments must be a JSON object, not {type(arguments).__name__}"]
        problems = []
        for error in sorted(self._validator.iter_errors(dict(arguments)), key=str):
            where = ".".join(str(p) for p in error.absolute_path)
            problems.append(f"{where}: {error.message}" if where else error.message)
        return problems

    def spec(self) -> dict[str, Any]:
        """The tool as a function-calling model takes it."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }


class ActionKind(StrEnum):
    DONE = "done"  # nothing more: the record is finished
    OPT_OUT = "opt_out"  # never call this number again (the do-not-call list)
    CALL_BACK_AT = "call_back_at"  # dial the record again at a time (a retry)
    REFUSED = "refused"  # the callee said no: done, and the number cools down (caps)


@dataclass(frozen=True, slots=True)
class ResultAction:
    """When a result matches (its tool is ``tool``, if given, and each argument in ``when``
    has that value), take ``action``. For ``call_back_at``, ``at`` names the argument holding
    the time (ISO 8601; without an offset it is taken in ``timezone``, else UTC)."""

    action: ActionKind
    tool: str | None = None
    when: Mapping[str, Any] = field(default_factory=dict)
    at: str = "call_back_at"
    timezone: str | None = None

    def matches(self, result: CallResult) -> bool:
        if self.tool is not None and result.tool != self.tool:
            return False
        return all(result.arguments.get(key) == value for key, value in self.when.items())


@dataclass(frozen=True, slots=True)
class Action:
    """What a call's results ask for: ``kind``, with ``at`` for a call back, and the result
    that asked (None for the default ``done``)."""

    kind: ActionKind
    at: datetime | None = None
    result: CallResult | None = None
    problem: str | None = None  # why a matching action could not be taken as asked


def decide_action(results: Iterable[CallResult], actions: Sequence[ResultAction]) -> Action:
    """The action a call's results drive: the first action matched by the LAST result that
    matches any (a callee who first confirms, then asks to be called back, is called back).
    An opt-out anywhere in the call wins over everything: "stop calling me" is never undone
    by a later answer."""
    chosen = Action(ActionKind.DONE)
    for result in results:
        for rule in actions:
            if not rule.matches(result):
                continue
            if rule.action is ActionKind.OPT_OUT:
                return Action(ActionKind.OPT_OUT, result=result)
            if rule.action is ActionKind.CALL_BACK_AT:
                at, problem = _time(result.arguments.get(rule.at), rule.timezone)
                chosen = Action(ActionKind.CALL_BACK_AT, at, result, problem)
            else:
                chosen = Action(rule.action, result=result)
            break
    return chosen


def _time(value: object, timezone: str | None) -> tuple[datetime | None, str | None]:
    if not isinstance(value, str) or not value.strip():
        return None, f"no time given ({value!r})"
    try:
        at = datetime.fromisoformat(value.strip())
        if at.tzinfo is None:
            if timezone:
                from zoneinfo import ZoneInfo

                at = at.replace(tzinfo=ZoneInfo(timezone))
            else:
                at = at.replace(tzinfo=UTC)
        at = at.astimezone(UTC)
    except (ValueError, OverflowError):  # the model's words: anything may come
        return None, f"not an ISO 8601 time: {value!r}"
    if not MIN_YEAR <= at.year <= MAX_YEAR:
        return None, f"not a time to call back at: {value!r}"
    return at, None


# A call back is within reach: the model may say the year 9999.
MIN_YEAR, MAX_YEAR = 2000, 2100
