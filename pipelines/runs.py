"""Runs: one at a time per product, in the background, with progress and history."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import duckdb

from dataproduct.catalog import table_columns
from dataproduct.errors import ConflictError, DataproductError, NotFoundError
from dataproduct.quality import CheckResult, record_results, results_for_run
from dataproduct.storage import Storage, fetch_one
from pipelines.openlineage import OpenLineageEmitter
from pipelines.planner import Plan
from pipelines.runner import RunContext, RunOptions, StepResult, execute_plan

log = logging.getLogger("dataproduct.runs")

ACTIVE = ("queued", "running")


@dataclass
class Run:
    """A run's live state; persisted in `meta.runs` when it starts and when it ends."""

    id: str
    trigger: str
    principal: str
    pipeline_version: int
    total_steps: int
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    status: str = "running"
    finished_at: datetime | None = None
    steps: list[StepResult] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    error: dict[str, Any] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    def to_dict(self) -> dict[str, Any]:
        """Status, progress, per-model timings and the error, JSON-ready."""
        end = self.finished_at or datetime.now(UTC)
        return {
            "id": self.id,
            "status": self.status,
            "trigger": self.trigger,
            "principal": self.principal,
            "pipeline_version": self.pipeline_version,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "elapsed_s": round((end - self.started_at).total_seconds(), 3),
            "progress": {
                "step": len(self.steps),
                "of": self.total_steps,
                "rows_written": sum(s.rows for s in self.steps),
            },
            "steps": [s.to_dict() for s in self.steps],
            "checks": [c.to_dict(details=False) for c in self.checks],
            "error": self.error,
        }


class RunManager:
    """Starts runs in a background thread, one at a time, and remembers every run."""

    def __init__(
        self,
        storage: Storage,
        timeout_s: float | None = None,
        emitter: OpenLineageEmitter | None = None,
        on_end: Callable[[Run], None] | None = None,
    ) -> None:
        self.storage = storage
        self.timeout_s = timeout_s
        self.emitter = emitter
        self.on_end = on_end
        self._lock = threading.Lock()
        self._active: Run | None = None
        self._recover()

    def start(
        self,
        plan: Plan,
        *,
        pipeline_version: int,
        trigger: str,
        principal: str,
        options: RunOptions | None = None,
        after: Callable[[Run], None] | None = None,
    ) -> Run:
        """Start a run of `plan`; ConflictError if one is already running."""
        with self._lock:
            if self._active is not None and not self._active.done.is_set():
                raise ConflictError(
                    f"run {self._active.id} is still running", where=f"runs/{self._active.id}"
                )
            run = Run(uuid.uuid4().hex[:12], trigger, principal, pipeline_version, len(plan.steps))
            self._persist(run)
            self._active = run
        thread = threading.Thread(
            target=self._execute, args=(run, plan, options or RunOptions(), after), daemon=True
        )
        thread.start()
        return run

    def _execute(
        self,
        run: Run,
        plan: Plan,
        options: RunOptions,
        after: Callable[[Run], None] | None,
    ) -> None:
        timer = None
        if self.timeout_s:
            timer = threading.Timer(self.timeout_s, self._time_out, args=(run,))
            timer.daemon = True
            timer.start()
        context = RunContext(
            run_id=run.id,
            pipeline_version=run.pipeline_version,
            options=options,
            cancelled=run.cancelled,
            on_step=lambda index, result: run.steps.append(result),
            on_checks=run.checks.extend,
            on_commit=lambda cursor, results: self._write(cursor, _succeeded(run)),
        )
        started = time.perf_counter()
        if self.emitter:
            self.emitter.start(run.id, plan, run.started_at)
        try:
            execute_plan(self.storage, plan, context)
            # only now, after COMMIT, may a reader of this run see it succeeded
            self._finish(run, "succeeded", None, persist=False)
        except DataproductError as error:
            status = "cancelled" if run.cancelled.is_set() else "failed"
            self._finish(run, status, error.to_dict()["error"])
            self._keep_checks(run)
        except Exception as error:  # a bug must still end the run as failed
            log.exception("run %s crashed", run.id)
            self._finish(run, "failed", {"code": "internal_error", "message": str(error)})
        finally:
            self._emit_end(run, plan)
            if timer:
                timer.cancel()
            log.info("run %s %s in %.3fs", run.id, run.status, time.perf_counter() - started)
            run.done.set()
            if after is not None and run.status == "succeeded":
                after(run)
            if self.on_end is not None:
                self.on_end(run)

    def _keep_checks(self, run: Run) -> None:
        """Quality results of a failed run stay visible: they say why it failed."""
        if run.checks:
            with self.storage.transaction() as cursor:
                record_results(cursor, run.checks)

    def _emit_end(self, run: Run, plan: Plan) -> None:
        """The run's COMPLETE, FAIL or ABORT event, with the schemas it read and built."""
        if not self.emitter or run.finished_at is None:
            return
        if run.status == "succeeded":
            self.emitter.complete(run.id, plan, plan_schemas(self.storage, plan), run.finished_at)
        else:
            cancelled = run.status == "cancelled"
            self.emitter.fail(run.id, plan, run.error, run.finished_at, cancelled=cancelled)

    def _time_out(self, run: Run) -> None:
        if run.done.is_set():
            return
        run.error = {"code": "run_timeout", "message": f"the run took over {self.timeout_s}s"}
        with suppress(ConflictError):  # it ended meanwhile
            self.cancel(run.id)

    def _finish(
        self, run: Run, status: str, error: dict[str, Any] | None, *, persist: bool = True
    ) -> None:
        run.error = run.error or error
        run.finished_at = run.finished_at or datetime.now(UTC)
        run.status = status
        if persist:
            self._persist(run)

    def _persist(self, run: Run) -> None:
        with self.storage.transaction() as cursor:
            self._write(cursor, run)

    @staticmethod
    def _write(cursor: duckdb.DuckDBPyConnection, run: Run) -> None:
        cursor.execute("DELETE FROM meta.runs WHERE id = ?", [run.id])
        cursor.execute(
            "INSERT INTO meta.runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                run.id,
                run.status,
                run.trigger,
                run.principal,
                run.pipeline_version,
                run.started_at,
                run.finished_at,
                json.dumps([s.to_dict() for s in run.steps]),
                json.dumps(run.error) if run.error else None,
                run.total_steps,
            ],
        )

    def active(self) -> Run | None:
        """The run going now, if any."""
        run = self._active
        return run if run is not None and not run.done.is_set() else None

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Ask a running run to stop; it ends as cancelled and publishes nothing."""
        run = self._active
        if run is None or run.id != run_id or run.done.is_set():
            state = self.get(run_id)  # 404 when unknown
            raise ConflictError(
                f"run {run_id} is not running: it {state['status']}", where=f"runs/{run_id}"
            )
        run.cancelled.set()  # the runner interrupts the statement it is running
        return run.to_dict()

    def wait(self, run_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
        """Block until a run ends (or the timeout passes) and return its state."""
        run = self._active
        if run is not None and run.id == run_id:
            run.done.wait(timeout_s)
        return self.get(run_id)

    def get(self, run_id: str) -> dict[str, Any]:
        """One run's state; NotFoundError when unknown."""
        run = self._active
        if run is not None and run.id == run_id and not run.done.is_set():
            return run.to_dict()
        with self.storage.reader() as cursor:
            row = fetch_one(cursor, "SELECT * FROM meta.runs WHERE id = ?", [run_id])
            if row is None:
                raise NotFoundError(f"no run {run_id}", where=f"runs/{run_id}")
            return _run_from_row(row, results_for_run(cursor, run_id))

    def history(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest runs, newest first."""
        active = self._active
        with self.storage.reader() as cursor:
            rows = cursor.execute(
                "SELECT * FROM meta.runs ORDER BY started_at DESC LIMIT ?", [limit]
            ).fetchall()
            return [
                active.to_dict() if active and active.id == r[0] and not active.done.is_set()
                else _run_from_row(r, results_for_run(cursor, r[0]))
                for r in rows
            ]  # fmt: skip

    def _recover(self) -> None:
        """Runs that were going when the process died end as failed; they published nothing."""
        with self.storage.transaction() as cursor:
            cursor.execute(
                "UPDATE meta.runs SET status = 'failed', finished_at = now(), error = ? "
                "WHERE status IN ('queued', 'running')",
                [json.dumps({"code": "interrupted", "message": "the process stopped mid-run"})],
            )


def plan_schemas(storage: Storage, plan: Plan) -> dict[str, dict[str, str]]:
    """Columns and types of every table a plan reads or builds, as they are now."""
    tables = {table for step in plan.steps for table in (step.target, *step.reads)}
    with storage.reader() as cursor:
        return {
            table: {c["name"]: c["type"] for c in table_columns(cursor, *table.split(".", 1))}
            for table in sorted(tables)
        }


def _succeeded(run: Run) -> Run:
    """The run's final record, written inside its publishing transaction."""
    run.finished_at = datetime.now(UTC)
    return replace(run, status="succeeded")


def _run_from_row(row: tuple[Any, ...], checks: list[CheckResult]) -> dict[str, Any]:
    steps = json.loads(row[7]) if row[7] else []
    end = row[6] or datetime.now(UTC)
    return {
        "id": row[0],
        "status": row[1],
        "trigger": row[2],
        "principal": row[3],
        "pipeline_version": row[4],
        "started_at": row[5].isoformat(),
        "finished_at": row[6].isoformat() if row[6] else None,
        "elapsed_s": round((end - row[5]).total_seconds(), 3),
        "progress": {
            "step": len(steps),
            "of": row[9],
            "rows_written": sum(s["rows"] for s in steps),
        },
        "steps": steps,
        "checks": [c.to_dict(details=False) for c in checks],
        "error": json.loads(row[8]) if row[8] else None,
    }
