"""LangGraph checkpoints in tenant tables: a run's state is the tenant's alone.

Graph runs use `live_db` (real commits): LangGraph writes checkpoints from a thread pool,
whose connections are outside the test's transaction. Direct saver calls run on the test's
thread, inside its transaction, with `django_db`.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Callable
from typing import Annotated, Any, TypedDict

import pytest
from django.db import connection, transaction
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver, Checkpoint, empty_checkpoint
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

from agents.checkpointer import TenantCheckpointSaver
from agents.models import CheckpointRecord, CheckpointWrite
from tenants.context import TenantScopeError, tenant_context
from tests.factories import World, build_world

CONFIG: RunnableConfig = {"configurable": {"thread_id": "t1"}}


class State(TypedDict):
    steps: Annotated[list[str], operator.add]
    count: int


def first(state: State) -> dict[str, Any]:
    return {"steps": ["first"], "count": state["count"] + 1}


def review(state: State) -> dict[str, Any]:
    answer = interrupt({"question": "Send this draft?", "count": state["count"]})
    return {"steps": [f"review:{answer}"], "count": state["count"] + 10}


def last(state: State) -> dict[str, Any]:
    return {"steps": ["last"], "count": state["count"] + 1}


def build(checkpointer: BaseCheckpointSaver[Any], *, with_review: bool = False) -> Any:
    builder = StateGraph(State)
    builder.add_node("first", first)
    builder.add_node("last", last)
    builder.add_edge(START, "first")
    if with_review:
        builder.add_node("review", review)
        builder.add_edge("first", "review")
        builder.add_edge("review", "last")
    else:
        builder.add_edge("first", "last")
    builder.add_edge("last", END)
    return builder.compile(checkpointer=checkpointer)


def count_rows(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return int(cursor.fetchone()[0])


@pytest.fixture
def worlds(live_db: None) -> tuple[World, World]:
    return build_world("acme"), build_world("globex")


@pytest.fixture
def acme(db: None) -> World:
    return build_world("acme")


@pytest.fixture
def globex(db: None) -> World:
    return build_world("globex")


# ----------------------------------------------------------------------------- graph runs


def test_a_run_completes_and_its_checkpoints_are_listed_newest_first(
    worlds: tuple[World, World],
) -> None:
    acme, _ = worlds
    saver = TenantCheckpointSaver()
    graph = build(saver)
    with tenant_context(acme.tenant):
        result = graph.invoke({"steps": [], "count": 0}, CONFIG)
    assert result == {"steps": ["first", "last"], "count": 2}

    with tenant_context(acme.tenant):
        state = graph.get_state(CONFIG)
        history = list(saver.list(CONFIG))
        latest = saver.get_tuple(CONFIG)
        by_limit = list(saver.list(CONFIG, limit=2))
        before = list(saver.list(CONFIG, before=history[1].config))
        before_and_limit = list(saver.list(CONFIG, before=history[0].config, limit=1))
        inputs = list(saver.list(CONFIG, filter={"source": "input"}))
        step_one = list(saver.list(CONFIG, filter={"source": "loop", "step": 1}))
        nothing = list(saver.list(CONFIG, filter={"source": "fork"}))
        everything = list(saver.list(None))
        graph_history = list(graph.get_state_history(CONFIG))

    assert state.values == result
    assert state.next == ()
    ids = [t.config["configurable"]["checkpoint_id"] for t in history]
    assert ids == sorted(ids, reverse=True)
    assert len(set(ids)) == len(ids) == 4
    assert [(t.metadata["source"], t.metadata["step"]) for t in history] == [
        ("loop", 2),
        ("loop", 1),
        ("loop", 0),
        ("input", -1),
    ]
    # Each checkpoint points at the one before it; the first has no parent.
    assert [t.parent_config for t in history] == [t.config for t in history[1:]] + [None]
    assert latest is not None
    assert latest.config == history[0].config == state.config
    assert latest.checkpoint["channel_values"]["count"] == 2
    assert latest.checkpoint == history[0].checkpoint

    assert [t.config for t in by_limit] == [t.config for t in history[:2]]
    assert [t.config for t in before] == [t.config for t in history[2:]]
    assert [t.config for t in before_and_limit] == [history[1].config]
    assert [t.metadata["step"] for t in inputs] == [-1]
    assert [t.config for t in step_one] == [history[1].config]
    assert nothing == []
    assert [t.config for t in everything] == [t.config for t in history]
    assert [s.config for s in graph_history] == [t.config for t in history]

    # The same run on LangGraph's reference saver: the same history, step by step.
    reference = InMemorySaver()
    build(reference).invoke({"steps": [], "count": 0}, CONFIG)
    expected = list(reference.list(CONFIG))
    assert [(t.metadata, t.checkpoint["channel_values"]) for t in history] == [
        (t.metadata, t.checkpoint["channel_values"]) for t in expected
    ]
    assert [len(t.pending_writes or []) for t in history] == [
        len(t.pending_writes or []) for t in expected
    ]


def test_a_run_paused_by_interrupt_resumes_with_the_answer(worlds: tuple[World, World]) -> None:
    acme, _ = worlds
    graph = build(TenantCheckpointSaver(), with_review=True)
    with tenant_context(acme.tenant):
        paused = graph.invoke({"steps": [], "count": 0}, CONFIG)
    assert paused["steps"] == ["first"]
    [pending] = paused["__interrupt__"]
    assert pending.value == {"question": "Send this draft?", "count": 1}

    with tenant_context(acme.tenant):
        state = graph.get_state(CONFIG)
    assert state.next == ("review",)
    assert [i.value for i in state.interrupts] == [pending.value]
    assert state.values == {"steps": ["first"], "count": 1}

    with tenant_context(acme.tenant):
        done = graph.invoke(Command(resume="yes"), CONFIG)
        final = graph.get_state(CONFIG)
    assert done == {"steps": ["first", "review:yes", "last"], "count": 12}
    assert final.next == ()
    assert final.values == done


def test_another_tenant_finds_nothing_under_the_same_thread_id(
    worlds: tuple[World, World],
) -> None:
    acme, globex = worlds
    saver = TenantCheckpointSaver()
    graph = build(saver, with_review=True)
    with tenant_context(acme.tenant):
        graph.invoke({"steps": [], "count": 0}, CONFIG)
        acme_rows = count_rows("agents_checkpointrecord"), count_rows("agents_checkpointwrite")
    assert acme_rows[0] > 0 and acme_rows[1] > 0

    with tenant_context(globex.tenant):
        assert count_rows("agents_checkpointrecord") == 0
        assert count_rows("agents_checkpointwrite") == 0
        assert saver.get_tuple(CONFIG) is None
        assert list(saver.list(CONFIG)) == []
        assert list(saver.list(None)) == []
        state = graph.get_state(CONFIG)
        assert state.values == {}
        assert state.next == ()
        assert CheckpointRecord.objects.count() == 0
        # Resuming here finds no paused run: the graph starts from nothing, without acme's
        # state, so its first node finds no `count` at all.
        with pytest.raises(KeyError, match="count"):
            graph.invoke(Command(resume="yes"), CONFIG)
        assert graph.get_state(CONFIG).values == {"steps": []}
        # Deleting the thread here touches only globex's rows.
        saver.delete_thread("t1")

    with tenant_context(acme.tenant):
        assert (
            count_rows("agents_checkpointrecord"),
            count_rows("agents_checkpointwrite"),
        ) == acme_rows
        state = graph.get_state(CONFIG)
        assert state.next == ("review",)
        assert state.values == {"steps": ["first"], "count": 1}
        done = graph.invoke(Command(resume="ok"), CONFIG)
    assert done["steps"] == ["first", "review:ok", "last"]


def test_outside_a_tenant_the_saver_and_the_graph_raise() -> None:
    saver = TenantCheckpointSaver()
    config: RunnableConfig = {"configurable": {"thread_id": "t1", "checkpoint_ns": ""}}
    written: RunnableConfig = {
        "configurable": {"thread_id": "t1", "checkpoint_ns": "", "checkpoint_id": "x"}
    }
    calls: list[Callable[[], object]] = [
        lambda: saver.get_tuple(config),
        lambda: saver.list(config),
        lambda: saver.list(None),
        lambda: saver.put(config, empty_checkpoint(), {}, {}),
        lambda: saver.put_writes(written, [("a", 1)], "task"),
        lambda: saver.delete_thread("t1"),
        lambda: build(saver).invoke({"steps": [], "count": 0}, CONFIG),
        lambda: build(saver).get_state(CONFIG),
    ]
    for call in calls:
        with pytest.raises(TenantScopeError):
            call()


def test_checkpoints_are_committed_as_the_run_writes_them(
    worlds: tuple[World, World], owner_sql: Callable[..., list[tuple[Any, ...]]]
) -> None:
    """LangGraph writes from its thread pool, each write in its own committed transaction
    (and on a connection that is closed afterwards): a caller's rollback keeps the run's
    checkpoints, so the run can be resumed."""
    acme, _ = worlds
    graph = build(TenantCheckpointSaver(), with_review=True)

    def backends() -> int:
        return int(
            owner_sql("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")[
                0
            ][0]
        )

    connection.ensure_connection()
    before = backends()

    class Abort(Exception):
        pass

    with pytest.raises(Abort), tenant_context(acme.tenant), transaction.atomic():
        graph.invoke({"steps": [], "count": 0}, CONFIG)
        raise Abort

    with tenant_context(acme.tenant):
        assert graph.get_state(CONFIG).next == ("review",)
        done = graph.invoke(Command(resume="later"), CONFIG)
    assert done["steps"] == ["first", "review:later", "last"]

    # The pool threads' connections are gone (a backend exits shortly after the close).
    deadline = time.monotonic() + 10
    while backends() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backends() <= before


def test_the_async_api_runs_a_graph_too(worlds: tuple[World, World]) -> None:
    acme, globex = worlds
    saver = TenantCheckpointSaver()
    graph = build(saver, with_review=True)

    async def run() -> tuple[Any, Any, list[Any]]:
        paused = await graph.ainvoke({"steps": [], "count": 0}, CONFIG)
        done = await graph.ainvoke(Command(resume="async"), CONFIG)
        listed = [t async for t in saver.alist(CONFIG, limit=2)]
        return paused, done, listed

    with tenant_context(acme.tenant):
        paused, done, listed = asyncio.run(run())
        history = list(saver.list(CONFIG))
    assert paused["steps"] == ["first"]
    assert done == {"steps": ["first", "review:async", "last"], "count": 12}
    assert [t.config for t in listed] == [t.config for t in history[:2]]

    with tenant_context(globex.tenant):
        assert asyncio.run(saver.aget_tuple(CONFIG)) is None
        asyncio.run(saver.adelete_thread("t1"))
    with tenant_context(acme.tenant):
        assert len(list(saver.list(CONFIG))) == len(history)
        asyncio.run(saver.adelete_thread("t1"))
        assert list(saver.list(CONFIG)) == []


# ----------------------------------------------------------------------------- saver calls


def _checkpoint(step: int) -> Checkpoint:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {"count": step}
    checkpoint["channel_versions"] = {"count": f"{step + 2:032}.0"}
    return checkpoint


def _exercise_writes(saver: BaseCheckpointSaver[Any]) -> tuple[Any, Any]:
    """The same put_writes sequence, for the saver under test and the reference."""
    root: RunnableConfig = {"configurable": {"thread_id": "w", "checkpoint_ns": ""}}
    config = saver.put(root, _checkpoint(0), {"source": "input", "step": -1}, {})
    saver.put_writes(config, [("b", "b-1"), ("a", "a-1")], "task-2", "~1")
    saver.put_writes(config, [("c", "c-1")], "task-1", "~0")
    saver.put_writes(config, [("__interrupt__", "first"), ("d", "d-1")], "task-1", "~0")
    # Re-put: regular writes keep the first value, special channels take the new one.
    saver.put_writes(config, [("b", "b-2"), ("a", "a-2"), ("e", "e-2")], "task-2", "~1")
    saver.put_writes(config, [("__interrupt__", "second")], "task-1", "~0")
    saver.put_writes(config, [("__error__", "e1"), ("__error__", "e2")], "task-3", "")
    saver.put_writes(config, [("__resume__", "yes"), ("__scheduled__", None)], "task-3", "")
    tuple_ = saver.get_tuple(config)
    assert tuple_ is not None
    return tuple_.pending_writes, next(iter(saver.list(root))).pending_writes


@pytest.mark.django_db
def test_pending_writes_are_ordered_and_deduplicated_like_langgraph(acme: World) -> None:
    saver = TenantCheckpointSaver()
    with tenant_context(acme.tenant):
        pending, listed = _exercise_writes(saver)
        rows = CheckpointWrite.objects.count()
    expected, _ = _exercise_writes(InMemorySaver())
    assert pending == listed == expected
    assert pending == [
        ("task-3", "__resume__", "yes"),
        ("task-3", "__scheduled__", None),
        ("task-3", "__error__", "e2"),
        ("task-1", "__interrupt__", "second"),
        ("task-1", "c", "c-1"),
        ("task-1", "d", "d-1"),
        ("task-2", "b", "b-1"),
        ("task-2", "a", "a-1"),
        ("task-2", "e", "e-2"),
    ]
    assert rows == len(pending)


@pytest.mark.django_db
def test_put_of_an_existing_checkpoint_replaces_it(acme: World) -> None:
    saver = TenantCheckpointSaver()
    root: RunnableConfig = {"configurable": {"thread_id": "r", "checkpoint_ns": ""}}
    checkpoint = _checkpoint(1)
    with tenant_context(acme.tenant):
        config = saver.put(root, checkpoint, {"source": "loop", "step": 1}, {})
        checkpoint["channel_values"] = {"count": 5}
        assert saver.put(root, checkpoint, {"source": "update", "step": 1}, {}) == config
        saved = saver.get_tuple(config)
        assert CheckpointRecord.objects.count() == 1
    assert saved is not None
    assert saved.config == config
    assert saved.checkpoint["channel_values"] == {"count": 5}
    assert saved.metadata == {"source": "update", "step": 1}
    assert saved.parent_config is None


@pytest.mark.django_db
def test_namespaces_and_explicit_checkpoint_ids(acme: World) -> None:
    saver = TenantCheckpointSaver()
    with tenant_context(acme.tenant):
        root = saver.put(
            {"configurable": {"thread_id": "n", "checkpoint_ns": ""}},
            _checkpoint(0),
            {"step": 0},
            {},
        )
        child = saver.put(root, _checkpoint(1), {"step": 1}, {})
        sub = saver.put(
            {"configurable": {"thread_id": "n", "checkpoint_ns": "inner:1"}},
            _checkpoint(2),
            {"step": 2},
            {},
        )
        named = saver.get_tuple(root)
        latest = saver.get_tuple({"configurable": {"thread_id": "n"}})
        in_sub = saver.get_tuple({"configurable": {"thread_id": "n", "checkpoint_ns": "inner:1"}})
        all_namespaces = list(saver.list({"configurable": {"thread_id": "n"}}))
        root_namespace = list(saver.list({"configurable": {"thread_id": "n", "checkpoint_ns": ""}}))
        one = list(saver.list(root))
        missing = saver.get_tuple(
            {"configurable": {"thread_id": "n", "checkpoint_ns": "", "checkpoint_id": "nope"}}
        )
    assert named is not None and named.checkpoint["channel_values"] == {"count": 0}
    assert latest is not None and latest.config == child
    assert latest.parent_config == root
    assert in_sub is not None and in_sub.config == sub
    assert [t.config for t in all_namespaces] == [sub, child, root]
    assert [t.config for t in root_namespace] == [child, root]
    assert [t.config for t in one] == [root]
    assert missing is None


@pytest.mark.django_db
def test_delete_thread_removes_only_that_thread_of_this_tenant(acme: World, globex: World) -> None:
    saver = TenantCheckpointSaver()

    def fill(thread_id: str) -> RunnableConfig:
        config = saver.put(
            {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}},
            _checkpoint(0),
            {"step": 0},
            {},
        )
        saver.put_writes(config, [("a", 1), ("b", 2)], "task")
        return config

    with tenant_context(acme.tenant):
        fill("t1")
        fill("t2")
    with tenant_context(globex.tenant):
        fill("t1")

    with tenant_context(acme.tenant):
        saver.delete_thread("t1")
        assert saver.get_tuple({"configurable": {"thread_id": "t1"}}) is None
        assert list(saver.list({"configurable": {"thread_id": "t1"}})) == []
        kept = saver.get_tuple({"configurable": {"thread_id": "t2"}})
        assert kept is not None and len(kept.pending_writes or []) == 2
        assert set(CheckpointRecord.objects.values_list("thread_id", flat=True)) == {"t2"}
        assert set(CheckpointWrite.objects.values_list("thread_id", flat=True)) == {"t2"}
    with tenant_context(globex.tenant):
        other = saver.get_tuple({"configurable": {"thread_id": "t1"}})
        assert other is not None and len(other.pending_writes or []) == 2


def test_versions_increase_like_the_reference_saver() -> None:
    saver = TenantCheckpointSaver()
    versions = [saver.get_next_version(None, None)]
    for _ in range(12):
        versions.append(saver.get_next_version(versions[-1], None))
    assert versions == sorted(versions)
    assert [int(v.split(".")[0]) for v in versions] == list(range(1, 14))
    assert (
        saver.get_next_version(None, None).split(".")[0]
        == (InMemorySaver().get_next_version(None, None).split(".")[0])
    )
