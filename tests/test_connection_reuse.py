"""A connection that served tenant A carries nothing of A into the next request.

The tenant setting is transaction-local (set_config(..., true)), so it ends with the
request's transaction, whether the connection is persistent (CONN_MAX_AGE > 0) or handed
back to psycopg's pool and picked up by another thread.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest
from django.db import connection, connections
from django.test import Client

from tests.factories import World, build_world

REQUESTS_PER_THREAD = 300
THREADS = 8


@pytest.fixture
def worlds(live_db: None) -> tuple[World, World]:
    return build_world("acme"), build_world("globex")


def backend_state() -> tuple[int, int, str | None]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_backend_pid(), (SELECT count(*) FROM conversations_conversation), "
            "current_setting('playbook.context', true)"
        )
        return cursor.fetchone()


def logged_in(user: object) -> Client:
    client = Client()
    client.force_login(user)  # type: ignore[arg-type]
    return client


@pytest.fixture
def persistent_connections() -> Iterator[None]:
    settings_dict = connections["default"].settings_dict
    previous = settings_dict["CONN_MAX_AGE"]
    connections["default"].close()
    settings_dict["CONN_MAX_AGE"] = 600
    yield
    settings_dict["CONN_MAX_AGE"] = previous
    connections["default"].close()


def test_a_persistent_connection_forgets_the_tenant_after_the_request(
    worlds: tuple[World, World], persistent_connections: None
) -> None:
    acme, globex = worlds
    acme_client, globex_client = logged_in(acme.consultant), logged_in(globex.consultant)

    response = acme_client.get("/api/v1/conversations/")
    assert {r["id"] for r in response.json()["results"]} == acme.conversation_ids
    pid_after_a = connection.connection.info.backend_pid

    # Same physical connection, no tenant: nothing visible, no setting left behind.
    pid, visible, setting = backend_state()
    assert pid == pid_after_a
    assert visible == 0
    assert setting in (None, "")

    response = globex_client.get("/api/v1/conversations/")
    assert {r["id"] for r in response.json()["results"]} == globex.conversation_ids
    assert connection.connection.info.backend_pid == pid_after_a
    assert backend_state()[1:] in ((0, None), (0, ""))


@pytest.fixture
def pooled_connections() -> Iterator[None]:
    """Turn on Django's psycopg pool for the runtime role, smaller than the thread count, so
    that every physical connection serves many requests of both tenants."""
    settings_dict = connections["default"].settings_dict
    previous_age, previous_options = settings_dict["CONN_MAX_AGE"], settings_dict["OPTIONS"]
    connections["default"].close()
    settings_dict["CONN_MAX_AGE"] = 0
    settings_dict["OPTIONS"] = {**previous_options, "pool": {"min_size": 2, "max_size": 3}}
    yield
    connections["default"].close()
    connections["default"].close_pool()  # type: ignore[attr-defined]
    settings_dict["CONN_MAX_AGE"], settings_dict["OPTIONS"] = previous_age, previous_options


def test_thousands_of_interleaved_requests_over_a_pool_never_leak(
    worlds: tuple[World, World], pooled_connections: None
) -> None:
    acme, globex = worlds
    expected = {"acme": acme.conversation_ids, "globex": globex.conversation_ids}
    users = {"acme": acme.consultant, "globex": globex.consultant}
    failures: list[str] = []
    backends: set[int] = set()
    counts = {"acme": 0, "globex": 0, "none": 0}
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        clients = {name: logged_in(user) for name, user in users.items()}
        try:
            for _ in range(REQUESTS_PER_THREAD):
                choice = rng.choice(["acme", "globex", "none"])
                if choice == "none":
                    # Outside any request: a raw query on whatever pooled connection we get.
                    pid, visible, setting = backend_state()
                    connection.close()  # hand it back to the pool
                    if visible or setting:
                        failures.append(f"no-tenant query saw {visible} rows, setting={setting!r}")
                else:
                    response = clients[choice].get("/api/v1/conversations/")
                    got = {r["id"] for r in response.json()["results"]}
                    if response.status_code != 200 or got != expected[choice]:
                        failures.append(f"{choice}: {response.status_code} {sorted(got)}")
                    pid = None
                with lock:
                    counts[choice] += 1
                    if pid:
                        backends.add(pid)
        except Exception as exc:  # surface thread errors in the main thread
            failures.append(f"thread error: {exc!r}")
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    assert sum(counts.values()) == THREADS * REQUESTS_PER_THREAD
    assert min(counts.values()) > 500
    # The pool really was shared: a handful of backends served thousands of requests.
    assert 1 <= len(backends) <= 3
