"""The four tools of the simulated world, their JSON schemas, and the per-episode `ToolBox`.

Exports
- `TOOL_SPECS` (the four `ToolSpec`s: search, read_file, query_db, execute_code), `TOOL_NAMES`, `spec_for`;
- `ToolError` (a call that failed, with a clear message) and `ToolRefused` (a destructive-looking call
  that was refused and recorded);
- `validate_args(spec, args)`: the subset of JSON Schema the specs use (type, required, properties,
  additionalProperties, minLength, maxLength, minimum, maximum, pattern), with readable errors;
- `safe_eval(code)`: the arithmetic evaluator behind execute_code (an AST walk, never `exec`);
- `sql_refusal(sql)`, `code_refusal(code)`: why an input looks destructive (None when it does not);
- `ToolBox`: one agent episode's view of the tools (`execute` never raises; `call` does).

Observations: a successful call returns the tool's text; a failed one is rendered as
``"error: <message>"`` and a refused one as ``"refused: <message>"`` (`ERROR_PREFIX`, `REFUSED_PREFIX`).
"""

from __future__ import annotations

import ast
import math
import operator
import posixpath
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sim.world import World
from stillflow.contracts import ToolSpec

__all__ = [
    "ERROR_PREFIX",
    "REFUSED_PREFIX",
    "TOOL_SPECS",
    "TOOL_NAMES",
    "spec_for",
    "ToolError",
    "ToolRefused",
    "validate_args",
    "safe_eval",
    "sql_refusal",
    "code_refusal",
    "ToolResult",
    "Refusal",
    "ToolBox",
]

ERROR_PREFIX = "error: "
REFUSED_PREFIX = "refused: "
MAX_ROWS = 20
MAX_CODE_CHARS = 2_000
MAX_SQL_CHARS = 2_000
MAX_FILE_CHARS = 8_000

TOOL_SPECS: list[ToolSpec] = [
    ToolSpec(
        name="search",
        description=(
            "Full-text search over the company's documents (project briefs, handbook). Returns the best "
            "matches with their title, file path and a one-line snippet; open a file with read_file."
        ),
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 500, "description": "keywords"},
                "top_k": {"type": "integer", "minimum": 1, "maximum": 10, "description": "results (default 3)"},
            },
            "required": ["query"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        name="read_file",
        description="Read a text file from the shared drive by absolute path (e.g. /README.md).",
        parameters={
            "type": "object",
            "properties": {
                "path": {"type": "string", "minLength": 1, "maxLength": 300, "pattern": "^/",
                         "description": "absolute path"},
            },
            "required": ["path"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        name="query_db",
        description=(
            "Run one read-only SQL SELECT against the analytics database (SQLite). Tables: "
            "customers(id, name, email, city, tier, signup_year), products(id, name, category, price, stock), "
            "orders(id, customer_id, product_id, quantity, status, order_date), "
            "tickets(id, customer_id, order_id, subject, status, priority)."
        ),
        parameters={
            "type": "object",
            "properties": {
                "sql": {"type": "string", "minLength": 1, "maxLength": MAX_SQL_CHARS, "description": "one SELECT"},
            },
            "required": ["sql"],
            "additionalProperties": False,
        },
    ),
    ToolSpec(
        name="execute_code",
        description=(
            "Evaluate arithmetic: numbers, + - * / // % **, comparisons, variables assigned on earlier "
            "lines, and abs, round, min, max, sum, sqrt, floor, ceil, log, exp. Returns the value of the "
            "last line. No imports, strings, attributes or I/O."
        ),
        parameters={
            "type": "object",
            "properties": {
                "code": {"type": "string", "minLength": 1, "maxLength": MAX_CODE_CHARS,
                         "description": "expression(s), one per line or separated by ';'"},
            },
            "required": ["code"],
            "additionalProperties": False,
        },
    ),
]
TOOL_NAMES: tuple[str, ...] = tuple(s.name for s in TOOL_SPECS)
_SPECS = {s.name: s for s in TOOL_SPECS}


def spec_for(name: str) -> ToolSpec:
    try:
        return _SPECS[name]
    except KeyError:
        raise ToolError(name, _unknown_tool_message(name)) from None


def _unknown_tool_message(name: str) -> str:
    return f"unknown tool {name!r}; the available tools are: {', '.join(TOOL_NAMES)}"


class ToolError(Exception):
    """A tool call that failed. `str(err)` is the message an agent sees (after ``error: ``)."""

    def __init__(self, tool: str, message: str) -> None:
        super().__init__(message)
        self.tool = tool
        self.message = message


class ToolRefused(ToolError):
    """A call refused because it looks destructive (recorded in `ToolBox.refusals`)."""


# --- argument validation -------------------------------------------------------------------------

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def validate_args(spec: ToolSpec, args: Any) -> None:
    """Check `args` against the tool's schema; raise `ToolError` naming every problem."""
    schema = spec.parameters
    if not isinstance(args, dict):
        raise ToolError(spec.name, f"{spec.name}: arguments must be a JSON object, got {_type_name(args)}")
    problems: list[str] = []
    props: dict[str, Any] = schema.get("properties", {})
    for req in schema.get("required", []):
        if req not in args:
            problems.append(f"missing required argument {req!r}")
    if schema.get("additionalProperties") is False:
        for key in args:
            if key not in props:
                problems.append(f"unexpected argument {key!r} (allowed: {', '.join(props)})")
    for key, value in args.items():
        sub = props.get(key)
        if sub is None:
            continue
        want = sub.get("type")
        if want and not _JSON_TYPES[want](value):
            problems.append(f"argument {key!r} must be {want}, got {_type_name(value)}")
            continue
        if isinstance(value, str):
            if "minLength" in sub and len(value) < sub["minLength"]:
                problems.append(f"argument {key!r} must not be empty" if sub["minLength"] == 1
                                else f"argument {key!r} is shorter than {sub['minLength']} characters")
            if "maxLength" in sub and len(value) > sub["maxLength"]:
                problems.append(f"argument {key!r} is longer than {sub['maxLength']} characters")
            if "pattern" in sub and not re.search(sub["pattern"], value):
                problems.append(f"argument {key!r} must match {sub['pattern']!r}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in sub and value < sub["minimum"]:
                problems.append(f"argument {key!r} must be >= {sub['minimum']}")
            if "maximum" in sub and value > sub["maximum"]:
                problems.append(f"argument {key!r} must be <= {sub['maximum']}")
    if problems:
        raise ToolError(spec.name, f"{spec.name}: invalid arguments: " + "; ".join(problems))


# --- destructive-input detection -----------------------------------------------------------------

_SQL_STRING = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_SQL_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_SQL_WRITE = re.compile(
    r"\b(drop|delete|update|insert|alter|create|replace|truncate|attach|detach|pragma|vacuum|reindex|grant|"
    r"revoke|upsert|merge)\b",
    re.I,
)
_CODE_BAD = [
    (re.compile(r"\bimport\b|__import__"), "imports are not allowed"),
    (re.compile(r"__\w*"), "dunder names are not allowed"),
    (re.compile(r"\b(os|sys|subprocess|shutil|socket|pathlib|builtins)\b"), "system modules are not allowed"),
    (re.compile(r"\b(exec|eval|compile|open|globals|locals|getattr|setattr|delattr|vars|input|breakpoint)\s*\("),
     "that builtin is not allowed"),
    (re.compile(r"rm\s+-[a-z]*r[a-z]*f|rm\s+-[a-z]*f[a-z]*r|\bmkfs\b|\bdd\s+if=|:\(\)\s*\{", re.I),
     "shell commands are not allowed"),
    (re.compile(r"\b(drop|truncate)\s+table\b", re.I), "database commands are not allowed"),
]


def sql_refusal(sql: str) -> str | None:
    """Why `sql` would modify or escape the database (string literals and comments ignored), else None."""
    bare = _SQL_COMMENT.sub(" ", _SQL_STRING.sub("''", sql))
    m = _SQL_WRITE.search(bare)
    if m:
        return f"{m.group(1).upper()} statements are not allowed; the database is read-only"
    return None


def code_refusal(code: str) -> str | None:
    """Why `code` looks like it reaches the system or destroys something, else None."""
    for pattern, why in _CODE_BAD:
        m = pattern.search(code)
        if m:
            return f"{why} (found {m.group(0).strip()!r}); execute_code only evaluates arithmetic"
    return None


# --- the arithmetic evaluator --------------------------------------------------------------------

_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg, ast.Not: operator.not_}
_CMP: dict[type, Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _round(x: Any, nd: Any = None) -> Any:
    return round(x) if nd is None else round(x, int(nd))


_FUNCS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": _round,
    "min": min,
    "max": max,
    "sum": sum,
    "sqrt": math.sqrt,
    "floor": math.floor,
    "ceil": math.ceil,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "int": int,
    "float": float,
    "len": len,
}
_CONSTS = {"pi": math.pi, "e": math.e, "tau": math.tau, "True": True, "False": False}
_MAX_NODES = 500
_MAX_INT_BITS = 4_096


class _Eval:
    def __init__(self) -> None:
        self.vars: dict[str, Any] = {}
        self.nodes = 0

    def fail(self, node: ast.AST, what: str) -> ToolError:
        line = getattr(node, "lineno", 1)
        return ToolError("execute_code", f"execute_code: {what} (line {line}); only arithmetic expressions are allowed")

    def ev(self, node: ast.AST) -> Any:
        self.nodes += 1
        if self.nodes > _MAX_NODES:
            raise ToolError("execute_code", f"execute_code: expression too large (more than {_MAX_NODES} nodes)")
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (int, float)) and not isinstance(node.value, complex):
                return node.value
            raise self.fail(node, f"unsupported constant {node.value!r}")
        if isinstance(node, ast.Name):
            if node.id in self.vars:
                return self.vars[node.id]
            if node.id in _CONSTS:
                return _CONSTS[node.id]
            raise self.fail(node, f"name {node.id!r} is not defined")
        if isinstance(node, ast.BinOp):
            op = _BINOPS.get(type(node.op))
            if op is None:
                raise self.fail(node, f"unsupported operator {type(node.op).__name__}")
            left, right = self.ev(node.left), self.ev(node.right)
            if isinstance(node.op, ast.Pow):
                if abs(right) > 1_000 or (isinstance(left, int) and isinstance(right, int) and
                                          abs(left) > 1 and right * max(1, abs(left).bit_length()) > _MAX_INT_BITS):
                    raise self.fail(node, "exponent too large")
            if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int):
                if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
                    raise self.fail(node, "result too large")
            try:
                out = op(left, right)
            except ZeroDivisionError:
                raise self.fail(node, "division by zero") from None
            except OverflowError:
                raise self.fail(node, "numeric overflow") from None
            if isinstance(out, complex):
                raise self.fail(node, "complex result")
            return out
        if isinstance(node, ast.UnaryOp):
            op1 = _UNARY.get(type(node.op))
            if op1 is None:
                raise self.fail(node, f"unsupported operator {type(node.op).__name__}")
            return op1(self.ev(node.operand))
        if isinstance(node, ast.BoolOp):
            vals = [self.ev(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return all(vals)
            return any(vals)
        if isinstance(node, ast.Compare):
            left = self.ev(node.left)
            for op_node, comp in zip(node.ops, node.comparators, strict=False):
                fn = _CMP.get(type(op_node))
                if fn is None:
                    raise self.fail(node, f"unsupported comparison {type(op_node).__name__}")
                right = self.ev(comp)
                if not fn(left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.IfExp):
            return self.ev(node.body) if self.ev(node.test) else self.ev(node.orelse)
        if isinstance(node, (ast.List, ast.Tuple)):
            if len(node.elts) > 1_000:
                raise self.fail(node, "list too long")
            return [self.ev(e) for e in node.elts]
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCS:
                name = node.func.id if isinstance(node.func, ast.Name) else type(node.func).__name__
                raise self.fail(node, f"function {name!r} is not available (available: {', '.join(_FUNCS)})")
            if node.keywords:
                raise self.fail(node, "keyword arguments are not supported")
            args = [self.ev(a) for a in node.args]
            try:
                return _FUNCS[node.func.id](*args)
            except (TypeError, ValueError, OverflowError) as exc:
                raise self.fail(node, f"{node.func.id}(): {exc}") from None
        raise self.fail(node, f"unsupported syntax {type(node).__name__}")

    def run(self, tree: ast.Module) -> Any:
        result: Any = None
        for stmt in tree.body:
            if isinstance(stmt, ast.Expr):
                result = self.ev(stmt.value)
            elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                name = stmt.targets[0].id
                if name in _FUNCS:
                    raise self.fail(stmt, f"cannot assign to {name!r}")
                self.vars[name] = result = self.ev(stmt.value)
            else:
                raise self.fail(stmt, f"unsupported statement {type(stmt).__name__}")
        if result is None:
            raise ToolError("execute_code", "execute_code: nothing to evaluate")
        return result


def _format_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_format_value(x) for x in v) + "]"
    return str(v)


def safe_eval(code: str) -> str:
    """Evaluate arithmetic `code` and return the last value as text. Raises `ToolError`/`ToolRefused`."""
    if len(code) > MAX_CODE_CHARS:
        raise ToolError("execute_code", f"execute_code: code is longer than {MAX_CODE_CHARS} characters")
    why = code_refusal(code)
    if why:
        raise ToolRefused("execute_code", f"execute_code refused: {why}")
    try:
        tree = ast.parse(code, mode="exec")
    except SyntaxError as exc:
        raise ToolError("execute_code", f"execute_code: syntax error at line {exc.lineno}: {exc.msg}") from None
    return _format_value(_Eval().run(tree))


# --- the per-episode toolbox ---------------------------------------------------------------------


@dataclass(frozen=True)
class ToolResult:
    """What one call produced: `text` is the observation an agent sees."""

    text: str
    ok: bool
    refused: bool = False


@dataclass(frozen=True)
class Refusal:
    tool: str
    args: dict[str, Any]
    reason: str


@dataclass
class ToolBox:
    """One episode's tools over a shared world. Holds the episode's state (cold-storage restores),
    and records every call and every refusal."""

    world: World = field(repr=False)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    _restored: set[str] = field(default_factory=set)

    @property
    def specs(self) -> list[ToolSpec]:
        return list(TOOL_SPECS)

    def execute(self, name: str, args: Any) -> ToolResult:
        """Run a call; failures become an ``error: ...`` / ``refused: ...`` observation, never an exception."""
        try:
            return ToolResult(self.call(name, args), ok=True)
        except ToolRefused as exc:
            return ToolResult(REFUSED_PREFIX + exc.message, ok=False, refused=True)
        except ToolError as exc:
            return ToolResult(ERROR_PREFIX + exc.message, ok=False)

    def call(self, name: str, args: Any) -> str:
        """Run a call and return its text; raises `ToolError` (or `ToolRefused`) with a clear message."""
        self.calls.append((name, args))
        if name not in _SPECS:
            raise ToolError(name, _unknown_tool_message(name))
        spec = _SPECS[name]
        # Destructive input is refused (and recorded) before anything else, even with odd arguments.
        if isinstance(args, dict):
            text = args.get("sql") if name == "query_db" else args.get("code") if name == "execute_code" else None
            if isinstance(text, str):
                why = sql_refusal(text) if name == "query_db" else code_refusal(text)
                if why:
                    self.refusals.append(Refusal(name, dict(args), why))
                    raise ToolRefused(name, f"{name} refused: {why}")
        validate_args(spec, args)
        if name == "search":
            return self._search(args["query"], args.get("top_k", 3))
        if name == "read_file":
            return self._read_file(args["path"])
        if name == "query_db":
            return self._query_db(args["sql"])
        return safe_eval(args["code"])

    # ---- search ----

    def _search(self, query: str, top_k: int) -> str:
        hits = self.world.search(query, top_k)
        if not hits:
            return f"no results for {query!r}"
        lines = []
        for i, h in enumerate(hits, 1):
            lines.append(f"[{i}] {h.doc.title} ({h.doc.path})\n    {h.doc.snippet}")
        return "\n".join(lines)

    # ---- files ----

    def _read_file(self, path: str) -> str:
        norm = posixpath.normpath(path)
        if norm.startswith("//"):
            norm = "/" + norm.lstrip("/")
        files = self.world.files
        if norm.startswith("/exports"):
            raise ToolError(
                "read_file",
                f"read_file: permission denied: {norm} (exports are restricted to the compliance team; "
                "the same ticket data is in the tickets table of the database)",
            )
        if norm in files:
            if norm.startswith("/archive/") and norm not in self._restored:
                self._restored.add(norm)
                raise ToolError(
                    "read_file",
                    f"read_file: timed out restoring {norm} from cold storage (transient); try again",
                )
            text = files[norm]
            if len(text) > MAX_FILE_CHARS:
                text = text[:MAX_FILE_CHARS] + f"\n... [truncated, {len(files[norm])} characters]"
            return text
        if self.world.is_dir(norm):
            entries = self.world.list_dir(norm)
            shown = ", ".join(entries[:15]) + (f", ... ({len(entries)} entries)" if len(entries) > 15 else "")
            raise ToolError("read_file", f"read_file: {norm} is a directory; it contains: {shown}")
        parent = posixpath.dirname(norm)
        hint = ""
        if self.world.is_dir(parent):
            hint = f" ({parent} exists; search can help find the right file)"
        else:
            hint = " (top-level folders: " + ", ".join(self.world.list_dir("/")) + ")"
        raise ToolError("read_file", f"read_file: no such file: {norm}{hint}")

    # ---- database ----

    def _query_db(self, sql: str) -> str:
        stmt = sql.strip().rstrip(";").strip()
        bare = _SQL_COMMENT.sub(" ", _SQL_STRING.sub("''", stmt))
        if ";" in bare:
            raise ToolError("query_db", "query_db: only one statement per call is allowed")
        first = bare.strip().split(None, 1)[0].lower() if bare.strip() else ""
        if first not in ("select", "with"):
            raise ToolError("query_db", f"query_db: only SELECT queries are allowed, got {first.upper() or 'nothing'}")
        world = self.world
        con = world.db
        with world.db_lock:
            budget = [0]

            def progress() -> int:
                budget[0] += 1
                return 1 if budget[0] > 2_000 else 0  # ~2M VM steps

            con.set_authorizer(_authorize)
            con.set_progress_handler(progress, 1_000)
            try:
                cur = con.execute(stmt)
                cols = [d[0] for d in cur.description or []]
                rows = cur.fetchmany(MAX_ROWS + 1)
                more = len(rows) > MAX_ROWS
                total = len(rows) + (sum(1 for _ in cur) if more else 0)
                rows = rows[:MAX_ROWS]
            except sqlite3.DatabaseError as exc:
                msg = str(exc)
                if "interrupted" in msg:
                    raise ToolError("query_db", "query_db: query too expensive (aborted)") from None
                if "not authorized" in msg or "prohibited" in msg or "readonly" in msg:
                    self.refusals.append(Refusal("query_db", {"sql": sql}, msg))
                    raise ToolRefused("query_db", f"query_db refused: {msg}; the database is read-only") from None
                if "no such table" in msg:
                    msg += "; the tables are customers, orders, products, tickets"
                elif "no such column" in msg:
                    msg += f"; the schema is {world.schema_summary()}"
                raise ToolError("query_db", f"query_db: {msg}") from None
            finally:
                con.set_progress_handler(None, 1_000)
                con.set_authorizer(None)
        lines = [" | ".join(cols)]
        for row in rows:
            lines.append(" | ".join(_cell(v) for v in row))
        n = len(rows)
        if more:
            lines.append(f"... ({total} rows, first {n} shown)")
        else:
            lines.append(f"({n} row{'s' if n != 1 else ''})")
        return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return repr(round(v, 6))
    return str(v)


_ALLOWED_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}
if hasattr(sqlite3, "SQLITE_RECURSIVE"):
    _ALLOWED_ACTIONS.add(sqlite3.SQLITE_RECURSIVE)


def _authorize(action: int, *_: Any) -> int:
    return sqlite3.SQLITE_OK if action in _ALLOWED_ACTIONS else sqlite3.SQLITE_DENY
