"""LangGraph checkpoints in tenant tables, under row-level security.

`TenantCheckpointSaver` stores LangGraph's checkpoints in `CheckpointRecord` and the pending
writes in `CheckpointWrite`, both `TenantScopedModel`s: every method needs a tenant context
(`TenantScopeError` outside one), reads and writes go through the scoped manager, and
PostgreSQL's row-level security admits only the current tenant's rows. A thread id resumed
in another tenant's context finds no checkpoint and starts from nothing.

The semantics follow LangGraph's reference `InMemorySaver`: the newest checkpoint is the
greatest checkpoint id; `list` yields newest first with `filter` (metadata equality),
`before` and `limit`; pending writes are keyed by `(task_id, idx)`, where the special
channels of `WRITES_IDX_MAP` (error, interrupt, resume, scheduled) take a fixed negative
index and overwrite, and a regular write never replaces one already stored; they come back
in `writes_sort_key` order. Unlike `InMemorySaver`, which keeps one blob per channel
version, a row holds the whole serialized checkpoint, channel values included.

Threads and transactions. A synchronous `graph.invoke` calls `get_tuple` on the calling
thread, but submits `put` and `put_writes` to a thread pool, with the caller's contextvars
copied -- so the tenant is known there, but the pool thread has its own database connection,
outside the caller's transaction and without its tenant context. Hence:

- On a thread whose connection is already in a transaction (the caller's `tenant_context`),
  the saver works inside it, in a savepoint.
- Otherwise it runs its own short transaction with the tenant setting of the current
  context (or the support-session setting, if the context came through one), commits, and
  closes the connection if it opened it (a pool thread dies with the run; with
  `DATABASE_POOL` the connection goes back to the pool).

So checkpoints written during a run are committed as LangGraph writes them, like
LangGraph's own Postgres saver, and stay if the caller's transaction rolls back: a failed
run can be resumed from its last checkpoint. The caller's transaction (READ COMMITTED) sees
them. Rows the caller writes itself (`update_state`, `delete_thread`) commit with the
caller.
"""

from __future__ import annotations

import builtins
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from asgiref.sync import sync_to_async
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.models import QuerySet
from django.db.models.functions import Collate
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    PendingWrite,
    SerializerProtocol,
    get_checkpoint_id,
    get_checkpoint_metadata,
    writes_sort_key,
)

from agents.models import CheckpointRecord, CheckpointWrite
from tenants.context import enter_connection, require_tenant_id

# (thread_id, checkpoint_ns, checkpoint_id)
_CheckpointKey = tuple[str, str, str]

WRITE_KEY_FIELDS = ["tenant", "thread_id", "checkpoint_ns", "checkpoint_id", "task_id", "idx"]
CHECKPOINT_KEY_FIELDS = ["tenant", "thread_id", "checkpoint_ns", "checkpoint_id"]


def _ordered(column: str) -> Collate:
    """Checkpoint ids compare as strings, bytewise, like Python's `max` in InMemorySaver
    (whatever the database's default collation)."""
    return Collate(column, "C")


class TenantCheckpointSaver(BaseCheckpointSaver[str]):
    """LangGraph checkpoint saver on the Django ORM, scoped to the current tenant."""

    def __init__(
        self, *, serde: SerializerProtocol | None = None, using: str = DEFAULT_DB_ALIAS
    ) -> None:
        super().__init__(serde=serde)
        self.using = using

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _tenant_transaction(self) -> Iterator[None]:
        """A transaction of the current tenant on this thread's connection (see module doc)."""
        require_tenant_id()
        connection = connections[self.using]
        opened_here = not connection.in_atomic_block and connection.connection is None
        try:
            with transaction.atomic(using=self.using):
                # Also inside the caller's tenant_context, where it is already entered: a
                # transaction opened on this thread without it would see nothing.
                enter_connection(self.using)
                yield
        finally:
            if opened_here:
                connection.close()

    def _records(self) -> QuerySet[CheckpointRecord]:
        return CheckpointRecord.objects.using(self.using)

    def _writes(self) -> QuerySet[CheckpointWrite]:
        return CheckpointWrite.objects.using(self.using)

    def _load(self, type_: str, data: Any) -> Any:
        return self.serde.loads_typed((type_, bytes(data)))

    def _pending_writes(
        self, records: Sequence[CheckpointRecord]
    ) -> dict[_CheckpointKey, builtins.list[PendingWrite]]:
        """The pending writes of `records`, each list in `writes_sort_key` order."""
        if not records:
            return {}
        found: dict[_CheckpointKey, builtins.list[CheckpointWrite]] = defaultdict(builtins.list)
        rows = self._writes().filter(
            thread_id__in={r.thread_id for r in records},
            checkpoint_id__in={r.checkpoint_id for r in records},
        )
        wanted = {(r.thread_id, r.checkpoint_ns, r.checkpoint_id) for r in records}
        for row in rows:
            key = (row.thread_id, row.checkpoint_ns, row.checkpoint_id)
            if key in wanted:
                found[key].append(row)
        return {
            key: [
                (row.task_id, row.channel, self._load(row.value_type, row.value))
                for row in sorted(
                    found.get(key, []),
                    key=lambda r: writes_sort_key(r.task_path, r.task_id, r.idx),
                )
            ]
            for key in wanted
        }

    def _tuple(
        self,
        record: CheckpointRecord,
        pending_writes: builtins.list[PendingWrite],
        *,
        config: RunnableConfig | None = None,
        metadata: CheckpointMetadata | None = None,
        thread_id: Any = None,
    ) -> CheckpointTuple:
        thread = record.thread_id if thread_id is None else thread_id
        checkpoint: Checkpoint = self._load(record.checkpoint_type, record.checkpoint)
        return CheckpointTuple(
            config=config
            or {
                "configurable": {
                    "thread_id": thread,
                    "checkpoint_ns": record.checkpoint_ns,
                    "checkpoint_id": record.checkpoint_id,
                }
            },
            checkpoint=checkpoint,
            metadata=(
                metadata
                if metadata is not None
                else self._load(record.metadata_type, record.metadata)
            ),
            parent_config=(
                {
                    "configurable": {
                        "thread_id": thread,
                        "checkpoint_ns": record.checkpoint_ns,
                        "checkpoint_id": record.parent_checkpoint_id,
                    }
                }
                if record.parent_checkpoint_id
                else None
            ),
            pending_writes=pending_writes,
        )

    # ------------------------------------------------------------------ sync API

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint `config` names (`checkpoint_id`), or the thread's latest."""
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        checkpoint_ns: str = configurable.get("checkpoint_ns", "")
        checkpoint_id = get_checkpoint_id(config)
        with self._tenant_transaction():
            records = self._records().filter(thread_id=str(thread_id), checkpoint_ns=checkpoint_ns)
            if checkpoint_id:
                records = records.filter(checkpoint_id=checkpoint_id)
            else:
                records = records.order_by(_ordered("checkpoint_id").desc())
            record = records.first()
            if record is None:
                return None
            writes = self._pending_writes([record])
        key = (record.thread_id, record.checkpoint_ns, record.checkpoint_id)
        return self._tuple(
            record,
            writes[key],
            config=config if checkpoint_id else None,
            thread_id=thread_id,
        )

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """The current tenant's checkpoints, newest first.

        `config` narrows to a thread (and a namespace and checkpoint id, if it names them;
        None lists every thread of the tenant), `filter` keeps checkpoints whose metadata
        has these values, `before` those older than its checkpoint id, `limit` caps the
        count. Evaluated before returning, so that the tenant check is not deferred.
        """
        thread_id: Any = None
        with self._tenant_transaction():
            records = self._records()
            if config is not None:
                configurable = config["configurable"]
                thread_id = configurable["thread_id"]
                records = records.filter(thread_id=str(thread_id))
                checkpoint_ns = configurable.get("checkpoint_ns")
                if checkpoint_ns is not None:
                    records = records.filter(checkpoint_ns=checkpoint_ns)
                if checkpoint_id := get_checkpoint_id(config):
                    records = records.filter(checkpoint_id=checkpoint_id)
            if before is not None and (before_id := get_checkpoint_id(before)):
                records = records.alias(sort_id=_ordered("checkpoint_id")).filter(
                    sort_id__lt=before_id
                )
            records = records.order_by(
                _ordered("checkpoint_id").desc(), "thread_id", "checkpoint_ns"
            )
            if limit is not None and limit <= 0:
                return iter(())

            # Metadata is serialized, so `filter` is applied here, before `limit`.
            candidates = records.values_list("pk", "metadata_type", "metadata")
            if not filter and limit is not None:
                candidates = candidates[:limit]
            selected: dict[int, CheckpointMetadata] = {}
            for pk, metadata_type, metadata_bytes in candidates:
                metadata = self._load(metadata_type, metadata_bytes)
                if filter and not all(value == metadata.get(key) for key, value in filter.items()):
                    continue
                selected[pk] = metadata
                if limit is not None and len(selected) >= limit:
                    break
            by_pk = self._records().in_bulk(builtins.list(selected))
            found = [by_pk[pk] for pk in selected if pk in by_pk]
            writes = self._pending_writes(found)

        return iter(
            [
                self._tuple(
                    record,
                    writes[(record.thread_id, record.checkpoint_ns, record.checkpoint_id)],
                    metadata=selected[record.pk],
                    thread_id=thread_id,
                )
                for record in found
            ]
        )

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store `checkpoint` (channel values included) as a child of `config`'s checkpoint."""
        configurable = config["configurable"]
        thread_id = configurable["thread_id"]
        checkpoint_ns: str = configurable.get("checkpoint_ns", "")
        checkpoint_type, checkpoint_bytes = self.serde.dumps_typed(checkpoint)
        metadata_type, metadata_bytes = self.serde.dumps_typed(
            get_checkpoint_metadata(config, metadata)
        )
        record = CheckpointRecord(
            thread_id=str(thread_id),
            checkpoint_ns=checkpoint_ns,
            checkpoint_id=checkpoint["id"],
            parent_checkpoint_id=configurable.get("checkpoint_id") or "",
            checkpoint_type=checkpoint_type,
            checkpoint=checkpoint_bytes,
            metadata_type=metadata_type,
            metadata=metadata_bytes,
        )
        with self._tenant_transaction():
            self._records().bulk_create(
                [record],
                update_conflicts=True,
                unique_fields=CHECKPOINT_KEY_FIELDS,
                update_fields=[
                    "parent_checkpoint_id",
                    "checkpoint_type",
                    "checkpoint",
                    "metadata_type",
                    "metadata",
                ],
            )
        return {
            "configurable": {
                "thread_id": thread_id,
                "checkpoint_ns": checkpoint_ns,
                "checkpoint_id": checkpoint["id"],
            }
        }

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's writes against `config`'s checkpoint.

        A regular write is keyed by its position and never replaces a stored one (a retried
        task re-puts the same writes); a special channel (`WRITES_IDX_MAP`) has a fixed
        negative index and replaces the stored value.
        """
        configurable = config["configurable"]
        thread_id = str(configurable["thread_id"])
        checkpoint_ns: str = configurable.get("checkpoint_ns", "")
        checkpoint_id: str = configurable["checkpoint_id"]
        by_idx: dict[int, tuple[str, Any]] = {}
        for position, (channel, value) in enumerate(writes):
            by_idx[WRITES_IDX_MAP.get(channel, position)] = (channel, value)
        regular: builtins.list[CheckpointWrite] = []
        special: builtins.list[CheckpointWrite] = []
        for idx, (channel, value) in by_idx.items():
            value_type, value_bytes = self.serde.dumps_typed(value)
            (special if idx < 0 else regular).append(
                CheckpointWrite(
                    thread_id=thread_id,
                    checkpoint_ns=checkpoint_ns,
                    checkpoint_id=checkpoint_id,
                    task_id=task_id,
                    task_path=task_path,
                    idx=idx,
                    channel=channel,
                    value_type=value_type,
                    value=value_bytes,
                )
            )
        with self._tenant_transaction():
            if regular:
                self._writes().bulk_create(regular, ignore_conflicts=True)
            if special:
                self._writes().bulk_create(
                    special,
                    update_conflicts=True,
                    unique_fields=WRITE_KEY_FIELDS,
                    update_fields=["channel", "value_type", "value", "task_path"],
                )

    def delete_thread(self, thread_id: str) -> None:
        """Delete the thread's checkpoints and writes (of the current tenant only)."""
        with self._tenant_transaction():
            self._writes().filter(thread_id=str(thread_id)).delete()
            self._records().filter(thread_id=str(thread_id)).delete()

    def get_next_version(self, current: str | None, channel: None) -> str:
        """`InMemorySaver`'s versions: a zero-padded counter and a random tie-breaker."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(current.split(".")[0])
        next_v = current_v + 1
        next_h = random.random()  # noqa: S311 (a tie-breaker, not a secret)
        return f"{next_v:032}.{next_h:016}"

    # ------------------------------------------------------------------ async API
    # The sync methods on Django's sync thread; the contextvars (the tenant) go along.

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await sync_to_async(self.get_tuple, thread_sensitive=True)(config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        def fetch() -> builtins.list[CheckpointTuple]:
            return builtins.list(self.list(config, filter=filter, before=before, limit=limit))

        for item in await sync_to_async(fetch, thread_sensitive=True)():
            yield item

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        return await sync_to_async(self.put, thread_sensitive=True)(
            config, checkpoint, metadata, new_versions
        )

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        await sync_to_async(self.put_writes, thread_sensitive=True)(
            config, writes, task_id, task_path
        )

    async def adelete_thread(self, thread_id: str) -> None:
        await sync_to_async(self.delete_thread, thread_sensitive=True)(thread_id)
