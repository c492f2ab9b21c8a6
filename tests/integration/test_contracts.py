"""The contract suites of dispatch.testing, run against every built-in agent and strategy, and
shown to fail for implementations that break the contract."""

from __future__ import annotations

import functools
import importlib.util
import itertools
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.ext.asyncio import create_async_engine

from dispatch import Agent, AgentContext, Call, DialRejected, DialRequest, Record, Strategy
from dispatch.abc import CallbackName, StrategyContext
from dispatch.agents.pinecall import PinecallAgent
from dispatch.agents.simulated import SimulatedAgent
from dispatch.contracts import DialOutcome
from dispatch.testing import (
    AgentContract,
    Answer,
    FakePinecall,
    ManualClock,
    ScriptedAgent,
    ScriptedCall,
    StrategyContract,
)
from strategies import CsvStrategy, SqlStrategy, WriteBack
from tests.support import ListStrategy, rec

pytestmark = pytest.mark.anyio

REPO = Path(__file__).resolve().parents[2]
CALLER = "+13185550100"


def destination(outcome: DialOutcome, n: int) -> str:
    """Numbers for scripted platforms: answering ones and refused ones never overlap."""
    return f"+1415555{(1000 if outcome == 'answer' else 2000) + n:04d}"


def refusals(outcomes: list[str]) -> dict[str, list[str]]:
    """A script refusing the first dial of every ``reject`` number, cycling ``outcomes``."""
    cycle = itertools.cycle(outcomes)
    return {
        destination("reject", n): [next(cycle)] for n in range(AgentContract.concurrent_rejected)
    }


# -- agents ----------------------------------------------------------------------------------


class TestScriptedAgent(AgentContract):
    @pytest.fixture
    def make_agent(self) -> Callable[[], Agent]:
        return lambda: ScriptedAgent(refusals(["busy", "no_answer"]))

    def number(self, outcome: DialOutcome, n: int) -> str:
        return destination(outcome, n)

    def destination_of(self, call: Call) -> str | None:
        return call.request.to if isinstance(call, ScriptedCall) else None


@functools.cache
def simulated_numbers(seed: int, answered: bool) -> list[str]:
    """Numbers whose first dial on a SimulatedAgent of ``seed`` answers (or not)."""
    plan = SimulatedAgent(seed=seed).plan
    candidates = (f"+1202555{i:04d}" for i in itertools.count())
    wanted = (to for to in candidates if (plan(to, 1).outcome == "answered") == answered)
    return list(itertools.islice(wanted, 10))


class TestSimulatedAgent(AgentContract):
    seed = 7

    @pytest.fixture
    def make_agent(self) -> Callable[[], Agent]:
        return lambda: SimulatedAgent(time_scale=0, seed=self.seed)

    def number(self, outcome: DialOutcome, n: int) -> str:
        return simulated_numbers(self.seed, outcome == "answer")[n]


class TestPinecallAgent(AgentContract):
    """Over real sockets on 127.0.0.1. The platform answers the concurrent dials in the reverse
    of their order (rings a few milliseconds apart, in real time), so an agent that matched
    platform events to the wrong dial would hand out another number's call. The agent's own
    clock stands still: no ping or dial timeout ever fires."""

    fake: FakePinecall

    @pytest.fixture
    async def make_agent(self) -> AsyncIterator[Callable[[], Agent]]:
        count = self.concurrent_answered
        script: dict[str, Sequence[str | Answer]] = {
            **refusals(["busy", "no-answer", "call.error"]),
            **{destination("answer", n): [Answer(ring=0.02 * (count - n))] for n in range(count)},
        }
        async with FakePinecall(script=script) as fake:
            self.fake = fake  # pytest binds a class's fixtures to the test's own instance
            yield lambda: PinecallAgent(
                url=fake.url,
                api_key=fake.api_key,
                agent_id="dialer",
                phone_numbers=[CALLER],
                clock=ManualClock(),
            )

    def number(self, outcome: DialOutcome, n: int) -> str:
        return destination(outcome, n)

    def destination_of(self, call: Call) -> str | None:
        return self.fake.calls.get(call.id)


# -- strategies ------------------------------------------------------------------------------

WRITE_BACKS = [None, WriteBack(call_id_column="dispatch_call_id")]
WRITE_BACK_IDS = ["plain", "write_back"]


class TestCsvStrategy(StrategyContract):
    expected_ids = ("r1", "r2", "r3")

    @pytest.fixture(params=WRITE_BACKS, ids=WRITE_BACK_IDS)
    def strategy(self, tmp_path: Path, request: pytest.FixtureRequest) -> Strategy:
        path = tmp_path / "leads.csv"
        rows = [f"r{i},+1415555{i:04d},Name{i}" for i in range(1, 4)]
        path.write_text("\n".join(["id,phone,first_name", *rows]) + "\n")
        return CsvStrategy(path, write_back=request.param)

    async def add_record(self, strategy: Strategy) -> str:
        assert isinstance(strategy, CsvStrategy)
        with strategy.path.open("a") as file:
            file.write("r9,+14155550009,Name9\n")
        return "r9"


metadata = MetaData()
leads = Table(
    "contract_leads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("phone", String(32)),
    Column("first_name", String(40)),
    Column("dispatch_status", String(60)),
    Column("dispatch_call_id", String(64)),
)


def lead(n: int) -> dict[str, Any]:
    return {"id": n, "phone": f"+1415555{n:04d}", "first_name": f"Name{n}"}


class TestSqlStrategy(StrategyContract):
    """On SQLite, PostgreSQL and MariaDB, with and without write-back."""

    expected_ids = ("1", "2", "3")

    @pytest.fixture(params=WRITE_BACKS, ids=WRITE_BACK_IDS)
    async def strategy(self, any_sql_url: str, request: pytest.FixtureRequest) -> Strategy:
        engine = create_async_engine(SqlStrategy(any_sql_url, leads.name).url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
                await conn.execute(insert(leads), [lead(n) for n in range(1, 4)])
        finally:
            await engine.dispose()
        return SqlStrategy(any_sql_url, leads.name, write_back=request.param)

    async def add_record(self, strategy: Strategy) -> str:
        assert isinstance(strategy, SqlStrategy)
        async with strategy.engine.begin() as conn:
            await conn.execute(insert(leads), [lead(9)])
        return "9"


def load_example(name: str) -> ModuleType:
    """A module of examples/ (not a package: the examples are scripts)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", REPO / "examples" / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


custom = load_example("custom_strategy.py")


class TestCustomStrategyExample(StrategyContract):
    expected_ids = ("crm-1", "crm-2", "crm-3")

    @pytest.fixture
    def strategy(self) -> Strategy:
        strategy: Strategy = custom.CrmStrategy(custom.FakeCrm())
        return strategy

    async def add_record(self, strategy: Strategy) -> str:
        leads: dict[str, dict[str, str]] = strategy.crm.leads  # type: ignore[attr-defined]
        leads["crm-9"] = {"phone": "+14155550009", "name": "Nine", "status": "new"}
        return "crm-9"


# -- the suites fail for broken implementations ----------------------------------------------
# Each check runs one contract test directly: first on a sound implementation (it passes), then
# on one with a single bug (it fails, for that bug).


def scripted() -> ScriptedAgent:
    return ScriptedAgent(refusals(["busy"]))


class SameCallAgent(ScriptedAgent):
    """Returns the first call it ever got for every later dial (an adapter that matches
    platform events to dials by "the first one waiting")."""

    first: Call | None = None

    async def dial(self, request: DialRequest) -> Call:
        call = await super().dial(request)
        self.first = self.first or call
        return self.first


class CrossedAgent(ScriptedAgent):
    """Each answering dial gets a call of its own, but placed to the number of the answering
    dial before it (an adapter that correlates by the wrong key)."""

    previous: str | None = None

    async def dial(self, request: DialRequest) -> Call:
        if request.to in refusals(["busy"]):
            return await super().dial(request)
        to, self.previous = self.previous or request.to, request.to
        return await super().dial(replace(request, to=to))


class SwallowingAgent(ScriptedAgent):
    """Turns a refused dial into a call that ends at once."""

    async def dial(self, request: DialRequest) -> Call:
        try:
            return await super().dial(request)
        except DialRejected as exc:
            call = ScriptedCall(f"swallowed-{request.dispatch_id}", request, self)
            call.end(exc.reason, 0.0)
            return call


class ForgetfulAgent(ScriptedAgent):
    """Overrides open() without calling super(): report_late reaches nobody."""

    async def open(self, context: AgentContext | None = None) -> None:
        self.opened = True


async def test_the_agent_contract_fails_an_agent_that_returns_one_call_for_two_dials() -> None:
    contract = TestScriptedAgent()
    await contract.test_concurrent_dials_each_get_their_own_call(scripted)
    with pytest.raises(AssertionError, match="one call returned twice"):
        await contract.test_concurrent_dials_each_get_their_own_call(
            lambda: SameCallAgent(refusals(["busy"]))
        )


async def test_the_agent_contract_fails_an_agent_that_hands_a_dial_another_numbers_call() -> None:
    contract = TestScriptedAgent()
    with pytest.raises(AssertionError, match="the call of another number"):
        await contract.test_concurrent_dials_each_get_their_own_call(
            lambda: CrossedAgent(refusals(["busy"]))
        )


async def test_the_agent_contract_fails_an_agent_that_swallows_a_rejection() -> None:
    contract = TestScriptedAgent()
    await contract.test_a_rejected_dial_raises_dial_rejected_and_the_agent_dials_on(scripted)
    broken = functools.partial(SwallowingAgent, refusals(["busy"]))
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        await contract.test_a_rejected_dial_raises_dial_rejected_and_the_agent_dials_on(broken)
    with pytest.raises(AssertionError, match=r"the dial to \+\d+ returned"):
        await contract.test_concurrent_dials_each_get_their_own_call(broken)


async def test_the_agent_contract_fails_an_agent_whose_open_forgets_the_context() -> None:
    contract = TestScriptedAgent()
    await contract.test_the_agent_keeps_the_context_it_was_opened_with(scripted)
    with pytest.raises(AssertionError, match="did not reach the context"):
        await contract.test_the_agent_keeps_the_context_it_was_opened_with(ForgetfulAgent)


class ForgetfulStrategy(ListStrategy):
    """Overrides open() without calling super(): poll_now reaches nobody."""

    async def open(self, context: StrategyContext | None = None) -> None:
        pass


class SelfishStrategy(ListStrategy):
    """Overrides deliver() for work of its own and never calls super(): callbacks assigned on
    the instance are never called."""

    async def deliver(self, callback: CallbackName, record: Record, *args: str) -> None:
        pass


class RepeatingStrategy(ListStrategy):
    """Claims to be incremental but yields every record on every poll."""

    incremental = True


class ListContract(StrategyContract):
    expected_ids = ("a", "b")


def listed(kind: type[ListStrategy] = ListStrategy) -> ListStrategy:
    return kind([rec("a", "+14155550001"), rec("b", "+14155550002")])


async def test_the_strategy_contract_fails_a_strategy_whose_open_forgets_the_context() -> None:
    contract = ListContract()
    await contract.test_the_strategy_keeps_the_context_it_was_opened_with(listed())
    with pytest.raises(AssertionError, match="did not reach the context"):
        await contract.test_the_strategy_keeps_the_context_it_was_opened_with(
            listed(ForgetfulStrategy)
        )


async def test_the_strategy_contract_fails_a_deliver_that_skips_the_callbacks() -> None:
    contract = ListContract()
    await contract.test_deliver_calls_the_callback_assigned_on_the_instance(listed())
    with pytest.raises(AssertionError, match="did not call the callbacks"):
        await contract.test_deliver_calls_the_callback_assigned_on_the_instance(
            listed(SelfishStrategy)
        )


async def test_the_strategy_contract_fails_an_incremental_strategy_that_repeats_itself() -> None:
    contract = ListContract()
    await contract.test_a_poll_of_an_unchanged_source_repeats_or_yields_nothing(listed())
    with pytest.raises(AssertionError, match="incremental poll of an unchanged source"):
        await contract.test_a_poll_of_an_unchanged_source_repeats_or_yields_nothing(
            listed(RepeatingStrategy)
        )
