"""The sim's four tools: results, refusals, bad arguments (with clear errors), and the evaluator."""

from __future__ import annotations

import sqlite3

import pytest
from jsonschema import Draft202012Validator

from sim.tools import (
    ERROR_PREFIX,
    REFUSED_PREFIX,
    TOOL_NAMES,
    TOOL_SPECS,
    ToolBox,
    ToolError,
    ToolRefused,
    code_refusal,
    safe_eval,
    spec_for,
    sql_refusal,
    validate_args,
)
from sim.world import get_world


@pytest.fixture
def box() -> ToolBox:
    return ToolBox(get_world(0))


def test_the_four_tools_have_valid_json_schemas() -> None:
    assert TOOL_NAMES == ("search", "read_file", "query_db", "execute_code")
    for spec in TOOL_SPECS:
        Draft202012Validator.check_schema(spec.parameters)
        assert spec.parameters["required"], spec.name
        assert spec.to_openai()["function"]["name"] == spec.name


@pytest.mark.parametrize(
    "name,args",
    [
        ("search", {"query": "x"}),
        ("search", {"query": "x", "top_k": 5}),
        ("search", {"q": "x"}),
        ("search", {"query": "x", "top_k": "three"}),
        ("search", {"query": "x", "top_k": 0}),
        ("search", {"query": ""}),
        ("search", {"query": ["x"]}),
        ("read_file", {"path": "/a"}),
        ("read_file", {"path": "a/b"}),
        ("read_file", {"file": "/a"}),
        ("read_file", {"path": 3}),
        ("query_db", {"sql": "SELECT 1"}),
        ("query_db", {"query": "SELECT 1"}),
        ("query_db", {"sql": None}),
        ("execute_code", {"code": "1+1"}),
        ("execute_code", {"code": True}),
        ("execute_code", {"expression": "1+1"}),
        ("execute_code", {}),
    ],
)
def test_validate_args_agrees_with_jsonschema(name: str, args: dict) -> None:
    spec = spec_for(name)
    reference_ok = Draft202012Validator(spec.parameters).is_valid(args)
    try:
        validate_args(spec, args)
        ours_ok = True
    except ToolError:
        ours_ok = False
    assert ours_ok == reference_ok


def test_bad_arguments_get_clear_errors(box: ToolBox) -> None:
    r = box.execute("search", {"q": "falcon", "top_k": "three"})
    assert not r.ok and not r.refused
    assert r.text.startswith(ERROR_PREFIX + "search: invalid arguments")
    assert "missing required argument 'query'" in r.text
    assert "unexpected argument 'q'" in r.text
    assert "'top_k' must be integer, got string" in r.text
    r = box.execute("read_file", {"path": ["/README.md"]})
    assert "argument 'path' must be string, got array" in r.text
    r = box.execute("query_db", ["SELECT 1"])
    assert "arguments must be a JSON object, got array" in r.text


def test_unknown_tool_lists_the_real_ones(box: ToolBox) -> None:
    r = box.execute("web_search", {"query": "x"})
    assert not r.ok
    assert r.text == ERROR_PREFIX + "unknown tool 'web_search'; the available tools are: search, read_file, query_db, execute_code"
    with pytest.raises(ToolError):
        box.call("web_search", {"query": "x"})


# --- search -----------------------------------------------------------------------------------


def test_search_finds_a_project_brief_first(box: ToolBox) -> None:
    proj = get_world(0).projects[42]
    text = box.call("search", {"query": proj.codename})
    first = text.splitlines()[0]
    assert first == f"[1] Project {proj.codename} ({proj.path})"
    assert text.count("\n[") == 2  # three hits by default
    # the snippet does not give the facts away: reading the file is needed
    assert proj.owner not in text


def test_search_top_k_and_no_results(box: ToolBox) -> None:
    assert box.call("search", {"query": "refund policy", "top_k": 1}).startswith("[1] Refund policy")
    assert "[2]" not in box.call("search", {"query": "refund policy", "top_k": 1})
    assert box.call("search", {"query": "zzzqqq"}) == "no results for 'zzzqqq'"


# --- read_file --------------------------------------------------------------------------------


def test_read_file_returns_the_file(box: ToolBox) -> None:
    proj = get_world(0).projects[7]
    text = box.call("read_file", {"path": proj.path})
    assert f"- Owner: {proj.owner}" in text
    assert f"- Sponsor: customer {proj.sponsor_id}" in text
    assert box.call("read_file", {"path": "/docs/../README.md"}).startswith("# Acme Retail shared drive")


def test_read_file_errors_are_specific(box: ToolBox) -> None:
    with pytest.raises(ToolError, match=r"/docs is a directory; it contains: handbook/, projects/"):
        box.call("read_file", {"path": "/docs"})
    with pytest.raises(ToolError, match=r"no such file: /docs/nope.md \(/docs exists"):
        box.call("read_file", {"path": "/docs/nope.md"})
    with pytest.raises(ToolError, match=r"no such file: /etc/passwd \(top-level folders: "):
        box.call("read_file", {"path": "/etc/passwd"})
    with pytest.raises(ToolError, match=r"must match '\^/'"):
        box.call("read_file", {"path": "README.md"})


def test_exports_are_permission_denied_and_point_to_the_database(box: ToolBox) -> None:
    r = box.execute("read_file", {"path": "/exports/tickets/T-00001.json"})
    assert not r.ok and not r.refused
    assert "permission denied" in r.text and "tickets table" in r.text


def test_archived_files_fail_once_per_episode_then_succeed() -> None:
    world = get_world(0)
    path = world.reports[3].path
    box = ToolBox(world)
    first = box.execute("read_file", {"path": path})
    assert not first.ok and "cold storage (transient); try again" in first.text
    second = box.execute("read_file", {"path": path})
    assert second.ok and second.text.startswith(f"Daily report {world.reports[3].day}")
    # a new episode starts cold again
    assert not ToolBox(world).execute("read_file", {"path": path}).ok


# --- query_db ---------------------------------------------------------------------------------


def test_query_db_returns_a_table(box: ToolBox) -> None:
    c = get_world(0).customers[0]
    text = box.call("query_db", {"sql": f"SELECT email, tier FROM customers WHERE id = '{c.id}'"})
    assert text == f"email | tier\n{c.email} | {c.tier}\n(1 row)"


def test_query_db_truncates_long_results(box: ToolBox) -> None:
    text = box.call("query_db", {"sql": "SELECT id FROM customers"})
    lines = text.splitlines()
    assert lines[0] == "id" and len(lines) == 22
    assert lines[-1] == "... (2000 rows, first 20 shown)"


def test_query_db_errors_explain(box: ToolBox) -> None:
    with pytest.raises(ToolError, match="no such table: customer; the tables are customers, orders, products, tickets"):
        box.call("query_db", {"sql": "SELECT * FROM customer"})
    with pytest.raises(ToolError, match=r"no such column: mail; the schema is customers\(id, name, email"):
        box.call("query_db", {"sql": "SELECT mail FROM customers"})
    with pytest.raises(ToolError, match="only one statement per call"):
        box.call("query_db", {"sql": "SELECT 1; SELECT 2"})
    with pytest.raises(ToolError, match="only SELECT queries are allowed, got EXPLAIN"):
        box.call("query_db", {"sql": "EXPLAIN SELECT 1"})
    with pytest.raises(ToolError, match="query too expensive"):
        box.call("query_db", {"sql": "SELECT COUNT(*) FROM orders a, orders b"})


@pytest.mark.parametrize(
    "sql",
    [
        "DROP TABLE customers",
        "DELETE FROM orders WHERE status = 'cancelled'",
        "UPDATE tickets SET status = 'closed'",
        "INSERT INTO products VALUES ('P-9', 'x', 'y', 1, 1)",
        "SELECT * FROM customers; DROP TABLE customers",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "PRAGMA writable_schema = ON",
        "select 1 /* */ ; drop table orders",
    ],
)
def test_destructive_sql_is_refused_and_recorded(box: ToolBox, sql: str) -> None:
    before = box.call("query_db", {"sql": "SELECT COUNT(*) FROM customers"})
    r = box.execute("query_db", {"sql": sql})
    assert r.refused and not r.ok
    assert r.text.startswith(REFUSED_PREFIX + "query_db refused: ")
    assert "read-only" in r.text
    assert box.refusals and box.refusals[-1].args == {"sql": sql}
    assert box.call("query_db", {"sql": "SELECT COUNT(*) FROM customers"}) == before


def test_string_literals_do_not_trigger_refusals(box: ToolBox) -> None:
    assert sql_refusal("SELECT * FROM tickets WHERE subject = 'update address'") is None
    assert box.execute("query_db", {"sql": "SELECT COUNT(*) AS n FROM tickets WHERE subject = 'drop table'"}).ok
    assert box.refusals == []


def test_the_database_is_read_only_even_past_the_filter() -> None:
    # the authorizer and query_only pragma stop writes that slip past the keyword filter
    world = get_world(0)
    with world.db_lock, pytest.raises(sqlite3.OperationalError, match="readonly"):
        world.db.execute("DELETE FROM customers")
    count = ToolBox(world).call("query_db", {"sql": "SELECT COUNT(*) AS n FROM customers"})
    assert count == f"n\n{len(world.customers)}\n(1 row)"


# --- execute_code -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code,expected",
    [
        ("2 + 3 * 4", "14"),
        ("round(3 * 19.99 * (1 - 0.15), 2)", "50.97"),
        ("x = 17\ny = 4\nround(x / y, 2)", "4.25"),
        ("a = 2; a ** 10", "1024"),
        ("max([3, 9, 4]) - min(3, 1)", "8"),
        ("sqrt(16) + abs(-2)", "6.0"),
        ("7 // 2, 7 % 2", "[3, 1]"),
        ("1 < 2 < 3", "True"),
        ("-(2 ** 3) if 1 else 0", "-8"),
        ("round(pi, 3)", "3.142"),
    ],
)
def test_execute_code_evaluates_arithmetic(box: ToolBox, code: str, expected: str) -> None:
    assert box.call("execute_code", {"code": code}) == expected


@pytest.mark.parametrize(
    "code,message",
    [
        ("1 / 0", "division by zero"),
        ("'abc'", "unsupported constant 'abc'"),
        ("(1).real", "unsupported syntax Attribute"),
        ("foo(3)", "function 'foo' is not available"),
        ("y + 1", "name 'y' is not defined"),
        ("2 ** 100000", "exponent too large"),
        ("1 +", "syntax error at line 1"),
        ("for i in [1]: i", "unsupported statement For"),
        ("[x for x in [1]]", "unsupported syntax ListComp"),
        ("lambda: 1", "unsupported syntax Lambda"),
    ],
)
def test_execute_code_errors(box: ToolBox, code: str, message: str) -> None:
    r = box.execute("execute_code", {"code": code})
    assert not r.ok and not r.refused
    assert message in r.text


@pytest.mark.parametrize(
    "code",
    [
        "import os; os.system('rm -rf /')",
        "__import__('shutil').rmtree('/')",
        "open('/etc/passwd').read()",
        "eval('1+1')",
        "exec('x=1')",
        "rm -rf /",
        "subprocess.run(['ls'])",
        "().__class__.__bases__[0].__subclasses__()",
    ],
)
def test_destructive_code_is_refused_never_run(box: ToolBox, code: str) -> None:
    assert code_refusal(code) is not None
    r = box.execute("execute_code", {"code": code})
    assert r.refused and r.text.startswith(REFUSED_PREFIX + "execute_code refused: ")
    assert box.refusals[-1].tool == "execute_code"
    with pytest.raises(ToolRefused):
        safe_eval(code)


def test_refusal_comes_before_schema_validation(box: ToolBox) -> None:
    # an unsafe call with an extra argument is still recorded as a refusal, not a schema error
    r = box.execute("query_db", {"sql": "DROP TABLE orders", "why": "cleanup"})
    assert r.refused
