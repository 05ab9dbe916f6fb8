"""The results store: one SQLite file (sqlite-utils), schema migrations applied on open.

Tables (documented in ``docs/bench.md``):

- ``runs``: one row per method configuration run. Its identity ``key`` is a hash of
  (method, params, model sha256, backend, puzzles sha256, seed, and the backend options
  that change what it computes, ``backend_options``: bfloat16, cuda, ...; none for default
  options, whose runs keep the key they had before options were recorded; and the puzzle
  ``rules`` when they are "any", migration ``m004_rules``: rules "all" keep their key):
  running the same bench again finds the same row and continues it.
- ``results``: one row per puzzle per run, primary key ``(run_id, puzzle_index)``; each
  row is committed as soon as its puzzle finishes, so a killed bench loses at most the
  puzzle in flight and a re-run never duplicates one.
  Its ``trace`` is stored compressed (zlib of the JSON text, a BLOB; migration
  ``m003_trace_zlib``): ``Store.results(with_trace=True)``, ``decode`` and ``trace_text``
  give the JSON text back, and also read the plain-text traces of an older database.
- ``iterations``: one row per expert-iteration round, primary key ``(experiment, round)``.
- ``_migrations``: the names of the applied migrations.

Concurrency: WAL journal, a busy timeout, every write in a ``BEGIN IMMEDIATE``
transaction that is retried while the database is locked. Two benches (two processes)
can write one file at once.

Readers (``sbt bench report``, ``sbt bench runs``, the TUI's replay list) open the file
read-only (``open_store_readonly`` / ``read_only``): no migration, no journal switch, no
file created beside it, so a database in a read-only folder can be reported and a file
that is not an sbt database (empty, not SQLite, another program's) is refused untouched.
Writers (``sbt bench``, ``sbt iterate``) open it read-write and migrate it (``open_store``).
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
import urllib.parse
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from sqlite_utils import Database

from sbt_core import settings
from sbt_core.countdown import DEFAULT_RULES
from sbt_core.errors import SbtError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB_NAME = "results.db"
BUSY_TIMEOUT_S = 30.0  # sqlite's own busy handler, per statement
LOCK_RETRY_S = 300.0  # our retry loop on "database is locked", per transaction
RUN_STATUSES = ("running", "done", "interrupted", "failed")

T = TypeVar("T")


class StoreError(SbtError):
    """The results database cannot be used (foreign file, corrupt, newer schema, ...)."""

    exit_code = 2


def default_db_path() -> Path:
    """``$SBT_DB`` if set, else ``results.db`` at the repository root."""
    return settings.db_path() or REPO_ROOT / DEFAULT_DB_NAME


def utcnow() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def run_key(method: str, params: dict, model_sha256: str | None, backend: str | None,
            puzzles_sha256: str, seed: int, options: dict | None = None, rules: str | None = None) -> str:
    """A run's identity: same method, params, weights, backend, puzzles, seed, backend
    options (``BackendOptions.identity``: the non-default ones that change the computation)
    and puzzle rules -> same run. No options (the defaults) and rules "all" (or None) leave
    the key as it was before they counted: one puzzle file run under rules "any" is another run."""
    ident = {"method": method, "params": params, "model_sha256": model_sha256 or None,
             "backend": backend or None, "puzzles_sha256": puzzles_sha256, "seed": int(seed)}
    if options:
        ident["options"] = options
    if rules and rules != DEFAULT_RULES:
        ident["rules"] = rules
    return hashlib.sha256(canonical_json(ident).encode()).hexdigest()


def puzzles_sha256(puzzles: Iterable) -> str:
    """Hash of a puzzle list (order matters; whitespace and extra JSON fields do not)."""
    h = hashlib.sha256()
    for p in puzzles:
        h.update(canonical_json([list(p.numbers), p.target]).encode() + b"\n")
    return h.hexdigest()


def is_locked(exc: BaseException) -> bool:
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    msg = str(exc).lower()
    return "locked" in msg or "busy" in msg


# --------------------------------------------------------------------------- migrations


def _m001_initial(db: Database) -> None:
    db["runs"].create(
        {
            "id": int,
            "key": str,  # sha256 of the identity (see run_key)
            "method": str,  # a name of `sbt solve --method`
            "params": str,  # JSON object, canonical (sorted keys)
            "model": str,  # model name (None for methods without a model)
            "model_sha256": str,
            "backend": str,
            "split": str,  # split name (test_new, ...) or None for --puzzles
            "puzzles": str,  # the puzzle file the run read
            "puzzles_sha256": str,  # hash of the whole puzzle list of that file
            "puzzles_total": int,  # puzzles in that file
            "n_puzzles": int,  # puzzles asked for by the latest invocation (--limit)
            "seed": int,
            "git_sha": str,  # of the code that started the run (+ "-dirty")
            "versions": str,  # JSON: python, sbt, torch, transformers, sqlite_utils
            "command": str,  # the command line of the latest invocation
            "host": str,
            "pid": int,
            "started": str,  # ISO 8601 UTC, first start
            "updated": str,  # last status change
            "finished": str,  # when it became done / interrupted / failed
            "status": str,  # running | done | interrupted | failed
            "error": str,  # the error of a failed run
        },
        pk="id",
        not_null={"key", "method", "params", "puzzles_sha256", "seed", "status", "started"},
    )
    db["runs"].create_index(["key"], unique=True)
    db["runs"].create_index(["method"])
    db["results"].create(
        {
            "run_id": int,
            "puzzle_index": int,  # 0-based line index in the puzzle file
            "numbers": str,  # JSON list
            "target": int,
            "solved": int,  # 0/1, by the strict verifier
            "failure": str,  # verifier category, None when solved
            "steps": str,  # JSON list of "a op b = c"
            "score": float,  # the method's score of its answer (mean log-prob), if any
            "tokens": int,
            "model_calls": int,
            "backtracks": int,
            "expansions": int,
            "candidates": int,
            "wall_ms": float,
            "trace": str,  # JSON list of events (None with --no-trace)
            "finished": str,
        },
        pk=("run_id", "puzzle_index"),
        foreign_keys=[("run_id", "runs", "id")],
        not_null={"numbers", "target", "solved"},
    )
    db["iterations"].create(
        {
            "experiment": str,  # a name for one expert-iteration experiment
            "round": int,  # 0 = the starting model, 1..K = after fine-tuning round k
            "model": str,  # the fast model after this round (name or path)
            "model_sha256": str,
            "base_model": str,  # what this round fine-tuned from
            "fast_acc": float,  # greedy accuracy on the eval split
            "slow_acc": float,  # self-backtracking search accuracy on the eval split
            "eval_split": str,
            "n_search_puzzles": int,  # train puzzles searched this round
            "n_train_paths": int,  # verified paths kept for fine-tuning
            "search_run_id": int,  # runs.id of the search over train puzzles (if stored)
            "fast_run_id": int,  # runs.id of the greedy evaluation
            "slow_run_id": int,  # runs.id of the search evaluation
            "params": str,  # JSON: training / search settings of this round
            "status": str,  # running | done | failed
            "started": str,
            "finished": str,
        },
        pk=("experiment", "round"),
        foreign_keys=[("search_run_id", "runs", "id"), ("fast_run_id", "runs", "id"),
                      ("slow_run_id", "runs", "id")],
        not_null={"experiment", "round"},
    )


def _m002_backend_options(db: Database) -> None:
    # JSON object: the run's non-default backend options that change what it computes
    # (BackendOptions.identity, e.g. {"dtype": "bfloat16"}); NULL: all default
    db["runs"].add_column("backend_options", str)


def _m003_trace_zlib(db: Database) -> None:
    # results.trace: from JSON text to zlib-compressed JSON text (a BLOB in the same column;
    # SQLite keeps a BLOB as is under TEXT affinity), about 10x smaller. `trace_text` reads both.
    rowids = [r[0] for r in db.execute("select rowid from results where typeof(trace) = 'text'").fetchall()]
    for s in range(0, len(rowids), 500):
        chunk = rowids[s:s + 500]
        rows = db.execute(f"select rowid, trace from results where rowid in ({', '.join('?' * len(chunk))})",
                          chunk).fetchall()
        db.conn.executemany("update results set trace = ? where rowid = ?",
                            [(compress_trace(text), rowid) for rowid, text in rows])


def _m004_rules(db: Database) -> None:
    # the rules the run's puzzles were judged by: "all" (every number used once, the paper's)
    # or "any" (any subset, TV Countdown); NULL: a run written before rules, so "all"
    db["runs"].add_column("rules", str)


def _m005_training(db: Database) -> None:
    # JSON object: what it cost to train the run's model, every stage summed
    # (sbt_core.models.training_cost: objective, base, tokens, generated_tokens, wall_s,
    # hardware); NULL: no record (a model without training.json, a run before this column)
    db["runs"].add_column("training", str)


MIGRATIONS: list[tuple[str, Callable[[Database], None]]] = [
    ("m001_initial", _m001_initial),
    ("m002_backend_options", _m002_backend_options),
    ("m003_trace_zlib", _m003_trace_zlib),
    ("m004_rules", _m004_rules),
    ("m005_training", _m005_training),
]
KNOWN_MIGRATIONS = {name for name, _ in MIGRATIONS}
# migrations a read-only reader can do without: they add a column whose absence means its
# default (a database written before ``backend_options`` holds only default-option runs),
# so `sbt bench report` still reads an older results.db that it may not migrate
READER_OPTIONAL = {"m002_backend_options",
                   # traces of an older database are plain JSON text, which `trace_text` reads too
                   "m003_trace_zlib",
                   # a database written before rules holds only runs under rules "all"
                   "m004_rules",
                   # no training cost recorded: the report reads the shipped model's own record
                   "m005_training"}

TRACE_ZLIB_LEVEL = 6  # (on bench traces: 11x smaller; level 9 is 3% smaller and twice as slow)


def compress_trace(trace: Any) -> bytes | None:
    """A trace as stored in ``results.trace``: zlib of its JSON text. ``trace`` is a list of
    event dicts, their JSON text (compressed as it is, so it reads back byte for byte), or
    already stored bytes; None stays None (a run with ``--no-trace``)."""
    if trace is None or isinstance(trace, bytes):
        return trace
    if not isinstance(trace, str):
        trace = json.dumps(trace, separators=(",", ":"))
    return zlib.compress(trace.encode(), TRACE_ZLIB_LEVEL)


def trace_text(value: str | bytes | None) -> str | None:
    """The JSON text of a stored ``results.trace``: a zlib BLOB (``m003_trace_zlib`` on) or,
    in a database written before, the JSON text itself. A BLOB that is not compressed UTF-8
    raises ``StoreError``."""
    if value is None or isinstance(value, str):
        return value
    try:
        return zlib.decompress(value).decode()
    except (zlib.error, UnicodeDecodeError) as exc:
        raise StoreError(f"a stored trace is not zlib-compressed JSON ({exc})") from None


# --------------------------------------------------------------------------- the store


class Store:
    """A results database. Use ``open_store``; every write goes through ``transact``."""

    def __init__(self, db: Database, path: Path | None, readonly: bool = False) -> None:
        self.db = db
        self.path = path
        self.readonly = readonly  # opened by open_store_readonly: reads only
        self.immutable = False  # read as an immutable file (see connect_readonly)

    # -- plumbing

    def wal_appeared(self) -> bool:
        """Read as immutable, and a writer has opened the database since (its ``-wal`` exists)."""
        return bool(self.immutable and self.path is not None and _wal_file(self.path).exists())

    def close(self) -> None:
        """Close; folds the WAL back into the main file when no one else is using it
        (so that a committed ``results.db`` is complete without its ``-wal`` file)."""
        try:
            if self.path is not None and not self.readonly and not self.db.conn.in_transaction:
                self.db.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def transact(self, fn: Callable[[Database], T], timeout: float = LOCK_RETRY_S) -> T:
        """Run ``fn(db)`` in one ``BEGIN IMMEDIATE`` transaction, retried while locked."""
        conn = self.db.conn
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self.db)
                    if conn.in_transaction:  # (sqlite-utils 3 may have committed already)
                        conn.execute("COMMIT")
                    return out
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if not is_locked(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)

    def query(self, sql: str, params: Sequence | dict | None = None) -> list[dict]:
        return list(self.db.query(sql, params))

    @property
    def schema_version(self) -> list[str]:
        return [r["name"] for r in self.db["_migrations"].rows_where(order_by="name")]

    # -- runs

    def get_or_create_run(self, fields: dict) -> tuple[dict, bool]:
        """Find the run with this identity or create it; mark it running. (row, created).

        ``fields`` holds the runs columns; ``key`` is computed from the identity fields.
        Columns describing the first start (started, git_sha, versions) are kept on resume.
        """
        fields = dict(fields)
        if isinstance(fields.get("params"), dict):
            fields["params"] = canonical_json(fields["params"])
        options = fields.pop("backend_options", None)
        if isinstance(options, str):
            options = json.loads(options)
        if options:  # (default options: the column stays NULL)
            fields["backend_options"] = canonical_json(options)
        rules = fields.pop("rules", None) or DEFAULT_RULES
        training = fields.pop("training", None)
        key = run_key(fields["method"], json.loads(fields["params"]), fields.get("model_sha256"),
                      fields.get("backend"), fields["puzzles_sha256"], fields["seed"], options, rules)
        now = utcnow()

        def go(db: Database) -> tuple[dict, bool]:
            if "rules" in db["runs"].columns_dict:  # (m004_rules)
                fields["rules"] = rules
            if "training" in db["runs"].columns_dict:  # (m005_training)
                fields["training"] = training
            rows = list(db["runs"].rows_where("key = ?", [key]))
            if rows:
                row = rows[0]
                update = {k: fields[k] for k in ("command", "host", "pid", "n_puzzles", "puzzles", "model", "rules")
                          if k in fields}
                if fields.get("training"):  # (a run from before m005_training gets its model's cost)
                    update["training"] = fields["training"]
                if (row.get("n_puzzles") or 0) > (update.get("n_puzzles") or 0):
                    # a shorter --limit resumes into a run that asked for more: it keeps what it
                    # asked for and the command that asked it (the command of its longest start)
                    update.pop("n_puzzles", None)
                    update.pop("command", None)
                update.update(status="running", updated=now, finished=None, error=None)
                db["runs"].update(row["id"], update)
                return db["runs"].get(row["id"]), False
            record = {**fields, "key": key, "started": now, "updated": now, "status": "running"}
            rid = db["runs"].insert(record).last_pk
            return db["runs"].get(rid), True

        return self.transact(go)

    def set_status(self, run_id: int, status: str, error: str | None = None) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"bad run status {status!r}")
        now = utcnow()
        update = {"status": status, "updated": now, "error": error,
                  "finished": None if status == "running" else now}
        self.transact(lambda db: db["runs"].update(run_id, update))

    def run(self, run_id: int) -> dict:
        return self.db["runs"].get(run_id)

    def runs(self, where: str | None = None, params: Sequence | dict | None = None) -> list[dict]:
        return list(self.db["runs"].rows_where(where, params, order_by="id"))

    # -- results

    def done_indices(self, run_id: int) -> set[int]:
        return {r["puzzle_index"] for r in self.db.query(
            "select puzzle_index from results where run_id = ?", [run_id])}

    def add_result(self, run_id: int, row: dict) -> bool:
        """Insert one puzzle's result (committed at once). False if it was already there."""
        record = {**row, "run_id": run_id}
        if "trace" in record:
            record["trace"] = compress_trace(record["trace"])
        for k in ("numbers", "steps"):
            if k in record and record[k] is not None and not isinstance(record[k], str):
                record[k] = json.dumps(record[k], separators=(",", ":"))
        if "solved" in record:
            record["solved"] = int(bool(record["solved"]))
        record.setdefault("finished", utcnow())

        def go(db: Database) -> bool:
            cur = db.execute(
                f"insert or ignore into results ({', '.join(record)}) values ({', '.join('?' * len(record))})",
                list(record.values()))
            return cur.rowcount == 1

        return self.transact(go)

    def results(self, run_id: int, with_trace: bool = False) -> list[dict]:
        """A run's result rows in puzzle order; ``with_trace``: with ``trace`` as JSON text."""
        cols = "*" if with_trace else ", ".join(c for c in self.db["results"].columns_dict if c != "trace")
        rows = self.query(f"select {cols} from results where run_id = ? order by puzzle_index", [run_id])
        if with_trace:
            for r in rows:
                r["trace"] = trace_text(r.get("trace"))
        return rows

    def count_results(self, run_id: int) -> tuple[int, int]:
        """(results, solved) of a run."""
        row = self.query("select count(*) n, coalesce(sum(solved), 0) k from results where run_id = ?", [run_id])[0]
        return row["n"], row["k"]

    def result_counts(self) -> dict[int, tuple[int, int]]:
        """(results, solved) of every run, by run id, in one query."""
        return {r["run_id"]: (r["n"], r["k"]) for r in self.query(
            "select run_id, count(*) n, coalesce(sum(solved), 0) k from results group by run_id")}

    def traced_results(self, failed_only: bool = False, limit: int = 2000) -> list[dict]:
        """Per-puzzle results that have a stored trace (not the trace itself), newest run
        first, with their run's method, params, model, split, seed and rules as ``run_*`` (of
        the columns the database has) and their
        row id as ``rid`` (the TUI's replay list). Reads databases of every schema version."""
        cols = set(self.db["results"].columns_dict)
        if "trace" not in cols:
            return []
        run_cols = set(self.db["runs"].columns_dict)
        pick = [c for c in ("method", "params", "model", "split", "seed", "rules") if c in run_cols]
        sel = ", ".join(f"runs.{c} as run_{c}" for c in pick)
        rid = "results.id as rid" if "id" in cols else "results.rowid as rid"
        where = "results.trace is not null" + (" and results.solved = 0" if failed_only else "")
        return self.query(
            f"select {rid}, results.run_id, results.numbers, results.target, results.solved, "
            f"{'results.failure' if 'failure' in cols else 'null'} as failure, "
            f"{'results.backtracks' if 'backtracks' in cols else 'null'} as backtracks"
            f"{', ' + sel if sel else ''} from results left join runs on runs.id = results.run_id "
            f"where {where} order by results.run_id desc, rid limit ?", [limit])

    def result_by_id(self, rid: int) -> dict | None:
        """One result row by its id (rowid in an older schema), trace as JSON text."""
        key = "id" if "id" in self.db["results"].columns_dict else "rowid"
        rows = self.query(f"select * from results where {key} = ?", [rid])
        if not rows:
            return None
        rows[0]["trace"] = trace_text(rows[0].get("trace"))
        return rows[0]

    # -- expert iteration

    def record_iteration(self, experiment: str, round: int, **fields: Any) -> dict:
        """Insert or update the row of one expert-iteration round; returns it.

        Fields are the ``iterations`` columns (model, model_sha256, base_model, fast_acc,
        slow_acc, eval_split, n_search_puzzles, n_train_paths, search_run_id, fast_run_id,
        slow_run_id, params (dict or JSON), status, started, finished). Unknown keys raise.
        Call it at the start of a round (status="running") and again when it finishes
        (status="done", with the accuracies): a round whose row is ``done`` can be skipped
        when ``sbt iterate`` is resumed.
        """
        cols = set(self.db["iterations"].columns_dict)
        unknown = set(fields) - cols
        if unknown:
            raise ValueError(f"unknown iterations columns: {', '.join(sorted(unknown))}")
        if isinstance(fields.get("params"), (dict, list)):
            fields["params"] = canonical_json(fields["params"])
        fields.setdefault("status", "done")
        now = utcnow()
        if fields["status"] == "running":
            fields.setdefault("started", now)
        elif "finished" not in fields:
            fields["finished"] = now

        def go(db: Database) -> dict:
            existing = list(db["iterations"].rows_where("experiment = ? and round = ?", [experiment, round]))
            if existing:
                if "started" not in fields and not existing[0].get("started"):
                    fields["started"] = now
                db["iterations"].update((experiment, round), fields)
            else:
                fields.setdefault("started", now)
                db["iterations"].insert({"experiment": experiment, "round": round, **fields})
            return db["iterations"].get((experiment, round))

        return self.transact(go)

    def iterations(self, experiment: str | None = None) -> list[dict]:
        if experiment is None:
            return list(self.db["iterations"].rows_where(order_by="experiment, round"))
        return list(self.db["iterations"].rows_where("experiment = ?", [experiment], order_by="round"))

    def completed_rounds(self, experiment: str) -> set[int]:
        return {r["round"] for r in self.iterations(experiment) if r["status"] == "done"}


# --------------------------------------------------------------------------- opening


def _check_not_foreign(db: Database, label: str, empty_ok: bool = True) -> None:
    tables = set(db.table_names())  # raises DatabaseError on a file that is not SQLite
    if not tables:
        if empty_ok:
            return
        raise StoreError(f"{label} is not an sbt results database (it has no tables); choose another --db")
    if "_migrations" not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise StoreError(f"{label} is not an sbt results database (it has tables {shown} "
                         "but no _migrations table); choose another --db")
    cols = set(db["_migrations"].columns_dict)
    if "name" not in cols:
        raise StoreError(f"{label} is not an sbt results database (its _migrations table has no name column)")
    applied = {r["name"] for r in db.query("select name from _migrations")}
    unknown = applied - KNOWN_MIGRATIONS
    if unknown:
        raise StoreError(f"{label} was written by a newer sbt or another program "
                         f"(unknown migrations: {', '.join(sorted(unknown))}); upgrade sbt or choose another --db")
    missing = KNOWN_MIGRATIONS - applied - READER_OPTIONAL
    if not empty_ok and missing:  # read-only: it cannot be brought up to date here
        raise StoreError(f"{label} was written by an older sbt (missing migrations: "
                         f"{', '.join(sorted(missing))}); run `sbt bench` on it once to upgrade")


def migrate(store: Store) -> list[str]:
    """Apply the migrations not yet applied (in one transaction); returns their names."""
    db = store.db
    if "_migrations" in db.table_names():
        applied = {r["name"] for r in db.query("select name from _migrations")}
        if KNOWN_MIGRATIONS <= applied:
            return []

    def go(db: Database) -> list[str]:
        db["_migrations"].create({"name": str, "applied": str}, pk="name", if_not_exists=True)
        applied = {r["name"] for r in db.query("select name from _migrations")}
        done = []
        for name, fn in MIGRATIONS:
            if name not in applied:
                fn(db)
                db["_migrations"].insert({"name": name, "applied": utcnow()})
                done.append(name)
        return done

    return store.transact(go)


def open_store(path: str | Path | None = None, *, create: bool = True) -> Store:
    """Open (creating if needed) a results database and bring its schema up to date.

    ``path``: a file, ``":memory:"``, or None for ``default_db_path()``. A file that is
    not an sbt results database (not SQLite, corrupt, another program's tables, a newer
    schema) raises ``StoreError`` with one clear line.
    """
    if path is None:
        path = default_db_path()
    memory = str(path) == ":memory:"
    label = "the in-memory database" if memory else str(path)
    if not memory:
        p = Path(path)
        if p.is_dir():
            raise StoreError(f"--db {p}: is a directory, not a database file")
        if not p.exists():
            if not create:
                raise StoreError(f"no results database at {p} (run `sbt bench` first, or pass --db)")
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"--db {p}: cannot create its folder ({exc.strerror})") from None
    try:
        conn = sqlite3.connect(":memory:" if memory else str(path), timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise StoreError(f"{label}: cannot open ({exc})") from None
    try:
        db = Database(conn, execute_plugins=False)
        store = Store(db, None if memory else Path(path))
        _check_not_foreign(db, label)
        if not memory and db.journal_mode != "wal":
            _retry(db.enable_wal)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        migrate(store)
    except StoreError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        if is_locked(exc):
            raise StoreError(f"{label}: still locked by another process after {LOCK_RETRY_S:.0f} s") from None
        raise StoreError(f"{label} is not a usable sbt results database ({exc})") from None
    return store


SQLITE_MAGIC = b"SQLite format 3\x00"


def _sqlite_header(path: Path, label: str) -> bytes:
    """The first 100 bytes of an existing database file, or ``StoreError`` (one line) when
    it is missing, a folder, empty or not an SQLite file. Reads only."""
    if path.is_dir():
        raise StoreError(f"--db {path}: is a directory, not a database file")
    try:
        with open(path, "rb") as fh:
            head = fh.read(100)
    except FileNotFoundError:
        raise StoreError(f"no results database at {path} (run `sbt bench` first, or pass --db)") from None
    except OSError as exc:
        raise StoreError(f"{label}: cannot read ({exc.strerror or exc})") from None
    if not head:
        raise StoreError(f"{label} is not an sbt results database (it is an empty file); choose another --db")
    if not head.startswith(SQLITE_MAGIC):
        raise StoreError(f"{label} is not a usable sbt results database (not an SQLite file); choose another --db")
    return head


def connect_readonly(path: str | Path, label: str | None = None,
                     allow_immutable: bool = True) -> tuple[sqlite3.Connection, bool]:
    """A read-only connection to the existing database file ``path``, and whether it reads
    the file as ``immutable``. Nothing is written beside it or into it, so a database in a
    read-only folder (or owned by someone else) can be read.

    SQLite's ``mode=ro`` still creates ``-wal`` and ``-shm`` files beside a WAL database
    that no writer has open. So a WAL database without a ``-wal`` file (no writer: all its
    contents are in the main file) is read as ``immutable`` (unless not ``allow_immutable``);
    a caller that reads for long should check ``Store.wal_appeared`` afterwards and read
    again if a writer came meanwhile (``read_only`` does). A database with a writer open is
    read through the writer's WAL, so rows being written are seen.
    """
    path = Path(path)
    label = label or str(path)
    head = _sqlite_header(path, label)
    wal_mode = head[18:20] == b"\x02\x02"
    immutable = allow_immutable and wal_mode and not _wal_file(path).exists()
    uri = "file:" + urllib.parse.quote(str(path.absolute())) + "?mode=ro" + ("&immutable=1" if immutable else "")
    try:
        return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S), immutable
    except sqlite3.Error as exc:
        raise StoreError(f"{label}: cannot open read-only ({exc})") from None


def _wal_file(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def open_store_readonly(path: str | Path | None = None, *, allow_immutable: bool = True) -> Store:
    """Open an existing results database for reading only (reports): no migrations, no
    WAL switch, no file created or changed (see ``connect_readonly``). A file that is not
    an sbt results database (empty, not SQLite, another program's tables, another sbt's
    schema) raises ``StoreError`` with one clear line and is left as it was."""
    path = Path(path) if path is not None else default_db_path()
    label = str(path)
    conn, immutable = connect_readonly(path, label, allow_immutable)
    try:
        db = Database(conn, execute_plugins=False)
        _check_not_foreign(db, label, empty_ok=False)
        db.execute("PRAGMA query_only=ON")
    except StoreError:
        conn.close()
        raise
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{label} is not a usable sbt results database ({exc})") from None
    store = Store(db, path, readonly=True)
    store.immutable = immutable
    return store


def read_only(path: str | Path | None, fn: Callable[[Store], T]) -> T:
    """``fn(store)`` on a read-only view of the database at ``path`` (``open_store_readonly``).
    If it was read as immutable and a writer opened it meanwhile (a ``-wal`` appeared, so
    the main file may have changed under the read), ``fn`` runs again through the WAL."""
    store = open_store_readonly(path)
    try:
        out = fn(store)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"results database {store.path}: {exc}") from None
    finally:
        store.close()
    if not store.wal_appeared():
        return out
    store = open_store_readonly(path, allow_immutable=False)
    try:
        return fn(store)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"results database {store.path}: {exc}") from None
    finally:
        store.close()


def _retry(fn: Callable[[], T], timeout: float = LOCK_RETRY_S) -> T:
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_locked(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)


def decode(row: dict, fields: Iterable[str] = ("params", "versions", "numbers", "steps", "trace",
                                              "backend_options")) -> dict:
    """A copy of a row with its JSON columns parsed (a compressed ``trace`` too)."""
    out = dict(row)
    if "trace" in fields and isinstance(out.get("trace"), bytes):
        out["trace"] = trace_text(out["trace"])
    for k in fields:
        if isinstance(out.get(k), str):
            try:
                out[k] = json.loads(out[k])
            except json.JSONDecodeError:
                pass
    return out
