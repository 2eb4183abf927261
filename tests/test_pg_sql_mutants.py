"""The SQL builders of the PostgreSQL store (payflow.store.pg_sql) called directly: the events
insert is built once, at import, where mutmut's mutants are never switched on, so its tests
(scripts/mutation pg_sql) could not tell a broken builder from a good one."""

from __future__ import annotations

from payflow.store import pg_sql


def test_arrays_number_typed_parameters_from_first() -> None:
    assert pg_sql.arrays(1, "text", "int") == "$1::text[], $2::int[]"
    assert pg_sql.arrays(7) == ""


def test_the_events_insert_takes_four_arrays_then_the_recording_time() -> None:
    sql = pg_sql._insert_events(3)
    assert "FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY" in sql
    assert "e.data::json, $7::text FROM" in sql
    assert pg_sql._insert_events(1) == pg_sql.ADD_EVENTS
