"""Benchmark: what the client-side deadline on PostgreSQL answers costs (server/db/deadline.py).

Two engines made by `server.db.session.make_engine` with the serving settings (statement_timeout
10 s, pre-ping, keepalives) against the PostgreSQL at 127.0.0.1:5432 (database `test`), one with the
deadline and one without (`client_deadline=False`), timed side by side in one run: in each round
both run the same work back to back, in alternating order (the machine's other load drifts between
rounds, not within one). Two kinds of work, the cheapest there are, so the deadline's share is as
large as it can be:

  statement   `SELECT 1` on a connection held open (one round trip each)
  session     what a request does: check a connection out of the pool (pre-ping), `SELECT 1`,
              commit, return it (rollback): four round trips

Shown, for elapsed time and for this process's CPU time: the median over rounds of µs per
operation, and the median over rounds of the ratio with/without within the round. Results go to
docs/benchmarks.md (section `db_deadline`).

    .venv/bin/python -m bench.db_deadline [--rounds 15] [--n 2000] [--no-write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from bench._common import PG_SERVER
from bench._report import write_section
from server.db.deadline import DeadlineConnection
from server.db.session import make_engine

SELECT_1 = text("SELECT 1")


Timing = tuple[float, float]  # (wall seconds, this process's CPU seconds)


def statements(engine: Engine, n: int) -> Timing:
    """Wall and CPU seconds for `n` `SELECT 1` on one held connection."""
    with engine.connect() as conn:
        conn.execute(SELECT_1)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(n):
            conn.execute(SELECT_1)
        return time.perf_counter() - start, time.process_time() - cpu


def sessions(engine: Engine, n: int) -> Timing:
    """Wall and CPU seconds for `n` request-like sessions: checkout with pre-ping, `SELECT 1`, commit, check-in."""
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(n):
        with Session(engine) as session:
            session.execute(SELECT_1)
            session.commit()
    return time.perf_counter() - start, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--n", type=int, default=2000, help="operations per engine per round")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()

    engines = {
        "with": make_engine(PG_SERVER, pool_size=1, statement_timeout=10.0),
        "without": make_engine(PG_SERVER, pool_size=1, statement_timeout=10.0, client_deadline=False),
    }
    with engines["with"].connect() as conn:  # the deadline must really be in place, or this measures nothing
        if not isinstance(conn.connection.dbapi_connection, DeadlineConnection):
            print("the engine has no deadline (psycopg before 3.3?): nothing to measure", file=sys.stderr)
            return 1
    with engines["without"].connect() as conn:
        assert not isinstance(conn.connection.dbapi_connection, DeadlineConnection)

    works: dict[str, Callable[[Engine, int], Timing]] = {"statement": statements, "session": sessions}
    per_op: dict[tuple[str, str, int], list[float]] = {(w, e, k): [] for w in works for e in engines for k in (0, 1)}
    ratios: dict[tuple[str, int], list[float]] = {(w, k): [] for w in works for k in (0, 1)}
    for work, run in works.items():
        for engine in engines.values():
            run(engine, args.n // 10)  # warm-up
        for r in range(args.rounds):
            order = ["with", "without"] if r % 2 == 0 else ["without", "with"]
            took = {name: run(engines[name], args.n) for name in order}
            for k in (0, 1):  # wall, CPU
                for name, timing in took.items():
                    per_op[work, name, k].append(timing[k] / args.n * 1e6)
                ratios[work, k].append(took["with"][k] / took["without"][k])
        print(f"{work}: done", file=sys.stderr, flush=True)
    for engine in engines.values():
        engine.dispose()

    rows = []
    for work in works:
        for k, measure in ((0, "wall"), (1, "client CPU")):
            with_us = statistics.median(per_op[work, "with", k])
            without_us = statistics.median(per_op[work, "without", k])
            r = ratios[work, k]
            ratio, spread = statistics.median(r), f"{min(r):.3f}–{max(r):.3f}"
            rows.append(f"| {work} | {measure} | {without_us:.1f} | {with_us:.1f} | **{ratio:.3f}×** | {spread} |")
    body = (
        f"PostgreSQL on 127.0.0.1 (same machine), serving settings, {args.rounds} rounds × {args.n} operations "
        "per engine, the two engines back to back in alternating order in each round. "
        "'statement': `SELECT 1` on a held connection (1 round trip); 'session': checkout with pre-ping, "
        "`SELECT 1`, commit, check-in (4 round trips). 'wall': elapsed time per operation; 'client CPU': "
        "the benchmark process's own CPU time per operation (where the deadline's cost lands; steadier than "
        "wall time when other work shares the machine).\n\n"
        "| work | measure | without deadline µs/op | with deadline µs/op | ratio (median of rounds) | ratio min–max |\n"
        "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    print(body)
    if not args.no_write:
        write_section("db_deadline", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
