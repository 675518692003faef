"""Mixed traffic from many tenants: zero errors other than intended 429s, zero cross-tenant rows.

The short run (60 s, 20 virtual users, 6 tenants) is part of `make test`; `make soak` runs
the full one (10 minutes, 50 users, 20 tenants) with the same code:
`LOAD_DURATION=600 LOAD_USERS=50 LOAD_TENANTS=20 pytest tests/reliability/test_load.py -s`.
How the run works and what it checks: tests/reliability/load.py.
"""

from __future__ import annotations

import pytest

from tests.reliability.load import LoadConfig, run_load

pytestmark = pytest.mark.reliability


def test_mixed_traffic_from_many_tenants_has_no_errors_and_no_cross_tenant_rows() -> None:
    result = run_load(LoadConfig.from_env())
    print("\n" + result.summary())
    assert result.problems() == [], result.summary()
