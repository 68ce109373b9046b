"""The task suite: six families of parameterised tasks with ground truth and a canonical solution.

Exports `Task`, `Stage`, `Call`, `Family`, `Suite`, `get_suite(world_seed)`, `split_of(task_id)`,
`FAMILIES` (the family names), `SYSTEM_PROMPT`, `HELDOUT_FRACTION`.

A task instance is a pure function of (world seed, family, index): the same `task_id` always means
the same question, answer and canonical path. Instance `i` of a family is combination
``perm(i)`` of the family's parameter space (an affine permutation, so neighbours differ).

Families (canonical steps: R reasoning, C tool call, O observation, A output):
- `lookup`        one query_db lookup                                       R C O A            (4)
- `search_read`   search the corpus, then read the brief                    R C O R C O A      (7)
- `query_compute` query the database, then compute with execute_code        R C O R C O A      (7)
- `multi_hop`     search → read brief → query the sponsor in the database   R C O R C O R C O A (10)
- `no_tools`      answer directly (arithmetic, conversions, word puzzles)   R A                (2)
- `recovery`      the first call fails; retry it (cold storage) or switch
                  tool (restricted export → database)                       R C O R C O A      (7)

Split: `split_of(task_id)` is a stable hash of the id: about `HELDOUT_FRACTION` of ids are "heldout".
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sim.tools import safe_eval
from sim.world import (
    CATEGORIES,
    CITIES,
    CODE_WORDS,
    ORDER_STATUSES,
    PRIORITIES,
    PROJECT_STATUSES,
    REGIONS,
    TICKET_STATUSES,
    TICKET_SUBJECTS,
    TIERS,
    World,
    get_world,
    stable_int,
)

__all__ = [
    "SYSTEM_PROMPT",
    "HELDOUT_FRACTION",
    "FAMILIES",
    "Call",
    "Stage",
    "Task",
    "Family",
    "Suite",
    "get_suite",
    "split_of",
]

SYSTEM_PROMPT = (
    "You are an operations assistant at Acme Retail. You can call tools: search (the document corpus), "
    "read_file (the shared drive), query_db (the read-only analytics database) and execute_code "
    "(arithmetic). Use a tool when the answer depends on company data, think briefly before each call, "
    "recover from tool errors, never run destructive commands, and finish with a short, direct final answer."
)
HELDOUT_FRACTION = 0.10
FAMILIES = ("lookup", "search_read", "query_compute", "multi_hop", "no_tools", "recovery")


def split_of(task_id: str) -> str:
    """'heldout' for about 10% of task ids (stable across processes and runs), else 'train'."""
    return "heldout" if stable_int("split", task_id) % 10_000 < HELDOUT_FRACTION * 10_000 else "train"


@dataclass(frozen=True)
class Call:
    """A tool call: name and JSON arguments."""

    name: str
    args: dict[str, Any]

    def key(self) -> tuple[str, str]:
        return self.name, repr(sorted(self.args.items()))


@dataclass(frozen=True)
class Stage:
    """One turn of the canonical path: reasoning (`intent` + `hints` pick its text) and one tool call.

    `expect_error` marks a call that is meant to fail (the recovery family's first call).
    """

    intent: str
    call: Call
    hints: dict[str, str] = field(default_factory=dict)
    expect_error: bool = False


@dataclass(frozen=True)
class Task:
    """One task instance with its ground truth and canonical solution."""

    task_id: str
    family: str
    index: int
    subtype: str
    question: str
    ground_truth: str
    answer: str  # the value as an agent would state it (e.g. "$1,250,000"); matches ground_truth
    subject: str  # what the answer is about, e.g. "the email address of customer C-00012"
    stages: tuple[Stage, ...]
    final_reasoning: str | None = None  # intent of a reasoning step before the answer (no_tools)
    distractors: tuple[str, ...] = ()  # plausible wrong values of the same kind
    hints: dict[str, str] = field(default_factory=dict)
    world_seed: int = 0

    @property
    def split(self) -> str:
        return split_of(self.task_id)

    @property
    def numeric(self) -> bool:
        try:
            float(self.ground_truth)
            return True
        except ValueError:
            return False

    @property
    def expected_steps(self) -> int:
        """TraceSteps of the canonical path: reasoning + call + observation per stage, then the output."""
        return 3 * len(self.stages) + 1 + (1 if self.final_reasoning else 0)

    @property
    def tools_used(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.call.name for s in self.stages))


# --- families -------------------------------------------------------------------------------------

Builder = Callable[[World, int, random.Random], dict[str, Any]]


@dataclass(frozen=True)
class _Subtype:
    name: str
    count: int
    build: Builder


def _coprime_step(n: int) -> int:
    step = 7_919  # a prime; bumped until coprime with n
    while math.gcd(step, n) != 1:
        step += 2
    return step


class Family:
    """A parameterised family: `size` distinct instances, `instance(i)` for 0 <= i < size."""

    def __init__(self, name: str, world: World, subtypes: Sequence[_Subtype]) -> None:
        self.name = name
        self.world = world
        self.subtypes = tuple(subtypes)
        self.size = sum(s.count for s in self.subtypes)
        self._step = _coprime_step(self.size)
        self._offset = stable_int("offset", name) % self.size
        self._prefix = f"w{world.seed}." if world.seed != 0 else ""

    def task_id(self, index: int) -> str:
        return f"{self._prefix}{self.name}-{index:06d}"

    def instance(self, index: int) -> Task:
        if not 0 <= index < self.size:
            raise IndexError(f"{self.name} has {self.size} instances; index {index} is out of range")
        combo = (index * self._step + self._offset) % self.size
        for sub in self.subtypes:
            if combo < sub.count:
                break
            combo -= sub.count
        rng = random.Random(stable_int("task", self.world.seed, self.name, index))
        spec = sub.build(self.world, combo, rng)
        return Task(task_id=self.task_id(index), family=self.name, index=index, subtype=sub.name,
                    world_seed=self.world.seed, **spec)


def _pick_other(rng: random.Random, pool: Sequence[str], truth: str, k: int = 3) -> tuple[str, ...]:
    others = [p for p in dict.fromkeys(pool) if p.lower() != truth.lower() and truth.lower() not in p.lower()
              and p.lower() not in truth.lower()]
    rng.shuffle(others)
    return tuple(others[:k])


def _num(v: float | int) -> str:
    """Ground truth text of a number (integers without a decimal point)."""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v) if isinstance(v, int) else repr(v)


def _sql_lookup(col: str, table: str, key: str) -> str:
    return f"SELECT {col} FROM {table} WHERE id = '{key}'"


# lookup ------------------------------------------------------------------------------------------

_CUSTOMER_ATTRS = (
    ("email", "the email address of customer {id}",
     ("What is the email address of customer {id}?", "Which email address do we have on file for customer {id}?")),
    ("city", "the city of customer {id}",
     ("Which city is customer {id} based in?", "In what city does customer {id} live?")),
    ("tier", "the loyalty tier of customer {id}",
     ("What loyalty tier is customer {id} on?", "Which loyalty tier does customer {id} have?")),
)
_PRODUCT_ATTRS = (
    ("price", "the price of product {id}", ("How much does product {id} cost?", "What is the list price of product {id}?")),
    ("category", "the category of product {id}",
     ("Which category is product {id} listed under?", "What product category does {id} belong to?")),
    ("stock", "the stock level of product {id}",
     ("How many units of product {id} are in stock?", "What is the current stock count for product {id}?")),
)
_TICKET_ATTRS = (
    ("status", "the status of ticket {id}", ("What is the status of support ticket {id}?", "Is ticket {id} open? Give its status.")),
    ("priority", "the priority of ticket {id}",
     ("What priority does support ticket {id} have?", "How was ticket {id} prioritised?")),
)
_ORDER_ATTRS = (
    ("status", "the status of order {id}", ("What is the status of order {id}?", "Where is order {id} at? Give its status.")),
    ("quantity", "the quantity in order {id}",
     ("How many units were ordered in order {id}?", "What quantity did order {id} ask for?")),
)


def _lookup_builder(kind: str) -> Builder:
    def build(world: World, j: int, rng: random.Random) -> dict[str, Any]:
        if kind == "customer":
            attrs, table = _CUSTOMER_ATTRS, "customers"
            row: Any = world.customers[j // len(attrs)]
        elif kind == "product":
            attrs, table = _PRODUCT_ATTRS, "products"
            row = world.products[j // len(attrs)]
        elif kind == "ticket":
            attrs, table = _TICKET_ATTRS, "tickets"
            row = world.tickets[j // len(attrs)]
        else:
            attrs, table = _ORDER_ATTRS, "orders"
            row = world.orders[j // len(attrs)]
        col, subject, questions = attrs[j % len(attrs)]
        value = getattr(row, col)
        subject = subject.format(id=row.id)
        if isinstance(value, (int, float)):
            truth = _num(value)
            answer = f"${value:,.2f}" if col == "price" else truth
            distractors: tuple[str, ...] = ()
        else:
            truth = answer = value
            pools = {
                "email": [c.email for c in rng.sample(world.customers, 6)],
                "city": CITIES, "tier": TIERS, "category": CATEGORIES,
                "status": ORDER_STATUSES if kind == "order" else TICKET_STATUSES, "priority": PRIORITIES,
            }
            distractors = _pick_other(rng, pools[col], value)
        return dict(
            question=rng.choice(questions).format(id=row.id),
            ground_truth=truth,
            answer=answer,
            subject=subject,
            stages=(
                Stage("db_lookup", Call("query_db", {"sql": _sql_lookup(col, table, row.id)}),
                      {"table": table, "column": col, "key": row.id, "kind": kind, "subject": subject}),
            ),
            distractors=distractors,
        )

    return build


# search_read / multi_hop -----------------------------------------------------------------------

_PROJECT_ATTRS = (
    ("owner", "the owner of project {c}", ("Who owns project {c}?", "Who is the owner of the {c} project?"), "Owner"),
    ("launch_year", "the launch year of project {c}",
     ("In which year did project {c} launch?", "When was project {c} launched (year)?"), "Launch year"),
    ("budget", "the budget of project {c}",
     ("What is the budget of project {c}?", "How much budget is allocated to project {c}?"), "Budget"),
    ("region", "the region of project {c}",
     ("Which region runs project {c}?", "What region is project {c} run out of?"), "Region"),
    ("status", "the status of project {c}",
     ("What is the current status of project {c}?", "Is project {c} still going? Give its status."), "Status"),
)


def _search_query(rng: random.Random, codename: str) -> str:
    return rng.choice((codename, f"project {codename}", f"{codename} brief", f"{codename} project brief"))


def _build_search_read(world: World, j: int, rng: random.Random) -> dict[str, Any]:
    proj = world.projects[j // len(_PROJECT_ATTRS)]
    col, subject, questions, label = _PROJECT_ATTRS[j % len(_PROJECT_ATTRS)]
    subject = subject.format(c=proj.codename)
    value = getattr(proj, col)
    if col == "budget":
        truth, answer, distractors = _num(value), f"${value:,}", ()
    elif col == "launch_year":
        truth = answer = str(value)
        distractors = ()
    else:
        truth = answer = value
        pool = {"owner": [p.owner for p in rng.sample(world.projects, 6)], "region": REGIONS,
                "status": PROJECT_STATUSES}[col]
        distractors = _pick_other(rng, pool, value)
    hints = {"codename": proj.codename, "path": proj.path, "label": label.lower(), "subject": subject}
    return dict(
        question=rng.choice(questions).format(c=proj.codename),
        ground_truth=truth,
        answer=answer,
        subject=subject,
        stages=(
            Stage("search_doc", Call("search", {"query": _search_query(rng, proj.codename)}), hints),
            Stage("read_doc", Call("read_file", {"path": proj.path}), hints),
        ),
        distractors=distractors,
    )


_SPONSOR_ATTRS = (
    ("email", "the email address of the sponsor of project {c}",
     ("What is the email address of the customer sponsoring project {c}?",
      "Project {c} has a sponsoring customer account. What is that customer's email?")),
    ("city", "the city of the sponsor of project {c}",
     ("Which city is the sponsor of project {c} based in?",
      "The customer who sponsors project {c} lives in which city?")),
    ("tier", "the loyalty tier of the sponsor of project {c}",
     ("What loyalty tier is the customer sponsoring project {c} on?",
      "Which loyalty tier does project {c}'s sponsoring customer have?")),
    ("name", "the name of the sponsor of project {c}",
     ("What is the name of the customer who sponsors project {c}?",
      "Who is the sponsoring customer of project {c}? Give their name.")),
    ("n_orders", "the number of orders placed by the sponsor of project {c}",
     ("How many orders has the customer sponsoring project {c} placed?",
      "Count the orders placed by the sponsoring customer of project {c}.")),
)


def _build_multi_hop(world: World, j: int, rng: random.Random) -> dict[str, Any]:
    proj = world.projects[j // len(_SPONSOR_ATTRS)]
    col, subject, questions = _SPONSOR_ATTRS[j % len(_SPONSOR_ATTRS)]
    cust = world.customer_by_id[proj.sponsor_id]
    subject = subject.format(c=proj.codename)
    if col == "n_orders":
        n = len(world.orders_by_customer.get(cust.id, []))
        truth = answer = str(n)
        sql = f"SELECT COUNT(*) AS n_orders FROM orders WHERE customer_id = '{cust.id}'"
        distractors: tuple[str, ...] = ()
    else:
        value = getattr(cust, col)
        truth = answer = value
        sql = _sql_lookup(col, "customers", cust.id)
        pool = {"email": [c.email for c in rng.sample(world.customers, 6)], "city": CITIES, "tier": TIERS,
                "name": [c.name for c in rng.sample(world.customers, 6)]}[col]
        distractors = _pick_other(rng, pool, value)
    hints = {"codename": proj.codename, "path": proj.path, "label": "sponsor", "key": cust.id,
             "column": col, "subject": subject}
    return dict(
        question=rng.choice(questions).format(c=proj.codename),
        ground_truth=truth,
        answer=answer,
        subject=subject,
        stages=(
            Stage("search_doc", Call("search", {"query": _search_query(rng, proj.codename)}), hints),
            Stage("read_doc", Call("read_file", {"path": proj.path}), hints),
            Stage("db_sponsor", Call("query_db", {"sql": sql}), hints),
        ),
        distractors=distractors,
    )


# query_compute -----------------------------------------------------------------------------------

_DISCOUNTS = (5, 10, 15, 20, 25, 30)


def _build_order_discount(world: World, j: int, rng: random.Random) -> dict[str, Any]:
    order = world.orders[j // len(_DISCOUNTS)]
    pct = _DISCOUNTS[j % len(_DISCOUNTS)]
    product = world.product_by_id[order.product_id]
    code = f"round({order.quantity} * {product.price!r} * (1 - {pct / 100!r}), 2)"
    value = float(safe_eval(code))
    subject = f"the total of order {order.id} after a {pct}% discount"
    q = rng.choice((
        "What is the total of order {o} after applying a {p}% discount?",
        "Order {o} gets a {p}% promotional discount. What does it come to?",
        "If we discount order {o} by {p}%, what is the new order total?",
    )).format(o=order.id, p=pct)
    sql = ("SELECT o.quantity, p.price FROM orders o JOIN products p ON p.id = o.product_id "
           f"WHERE o.id = '{order.id}'")
    hints = {"key": order.id, "pct": str(pct), "quantity": str(order.quantity), "price": repr(product.price),
             "what": f"quantity × price × (1 − {pct}%)", "subject": subject}
    return dict(
        question=q,
        ground_truth=_num(value),
        answer=f"${value:,.2f}",
        subject=subject,
        stages=(
            Stage("db_fetch", Call("query_db", {"sql": sql}), hints | {"fetch": "the quantity and unit price"}),
            Stage("compute", Call("execute_code", {"code": code}), hints),
        ),
    )


def _build_customer_avg(world: World, j: int, rng: random.Random) -> dict[str, Any]:
    cust = world.customers[j]
    orders = world.orders_by_customer[cust.id]
    total, n = sum(o.quantity for o in orders), len(orders)
    code = f"round({total} / {n}, 2)"
    value = float(safe_eval(code))
    subject = f"the average units per order for customer {cust.id}"
    q = rng.choice((
        "On average, how many units does customer {c} buy per order?",
        "What is the average quantity per order for customer {c}, to two decimals?",
    )).format(c=cust.id)
    sql = ("SELECT SUM(quantity) AS total_units, COUNT(*) AS n_orders FROM orders "
           f"WHERE customer_id = '{cust.id}'")
    hints = {"key": cust.id, "what": "total units ÷ number of orders", "subject": subject}
    return dict(
        question=q,
        ground_truth=_num(value),
        answer=_num(value),
        subject=subject,
        stages=(
            Stage("db_fetch", Call("query_db", {"sql": sql}), hints | {"fetch": "their total units and order count"}),
            Stage("compute", Call("execute_code", {"code": code}), hints),
        ),
    )


# no_tools ----------------------------------------------------------------------------------------

_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _build_add(world: World, j: int, rng: random.Random) -> dict[str, Any]:
    a, b = 10 + j // 100, 10 + j % 100
    q = rng.choice(("What is {a} + {b}?", "Add {a} and {b}.", "What do you get when you add {a} to {b}?",
                    "Quick one: {a} plus {b}?")).format(a=a, b=b)
    return _direct(q, a + b, f"{a} + {b}", {"how": f"{a} + {b} = {a + b}"})


def _build_crates(world: World, j: int, rng: random.Random) -> dict[str, Any]:
    per, n = 2 + j // 25, 2 + j % 25
    q = rng.choice((
        "A crate holds {p} lanterns. How many lanterns are in {n} crates?",
        "Each shelf fits {p} boxes. How many boxes fit on {n} shelves?",
    )).format(p=per, n=n)
    return _direct(q, per * n, "the total count", {"how": f"{per} × {n} = {per * n}"})


def _build_convert(world: World, j: int, rng: random.Random) -> dict[str, Any]:
    if j < 500:
        m = j + 1
        q = rng.choice(("How many seconds are there in {m} minutes?", "Convert {m} minutes to seconds."))
        return _direct(q.format(m=m), m * 60, f"{m} minutes in seconds", {"how": f"{m} × 60 = {m * 60}"})
    h = j - 500 + 1
    q = rng.choice(("How many minutes are there in {h} hours?", "Convert {h} hours to minutes."))
    return _direct(q.format(h=h), h * 60, f"{h} hours in minutes", {"how": f"{h} × 60 = {h * 60}"})


def _build_weekday(world: World, j: int, rng: random.Random) -> dict[str, Any]:
    d, n = j // 30, 1 + j % 30
    truth = _DAYS[(d + n) % 7]
    q = f"What day of the week is it {n} day{'s' if n > 1 else ''} after a {_DAYS[d]}?"
    return _direct(q, truth, "the day", {"how": f"{n} mod 7 = {n % 7} days past {_DAYS[d]}, so {truth}"},
                   distractors=_pick_other(rng, _DAYS, truth))


def _build_word(world: World, j: int, rng: random.Random) -> dict[str, Any]:
    word = CODE_WORDS[j // 2]
    if j % 2 == 0:
        rev = word[::-1]
        q = f"Spell the word '{word}' backwards."
        wrong = (word, word[1:][::-1] + word[0], rev[:-1])
        return _direct(q, rev, f"'{word}' backwards", {"how": f"reading '{word}' from the end gives '{rev}'"},
                       distractors=tuple(w for w in wrong if w != rev))
    q = f"How many letters are in the word '{word}'?"
    return _direct(q, len(word), f"the letter count of '{word}'", {"how": f"'{word}' has {len(word)} letters"})


def _direct(question: str, value: Any, subject: str, hints: dict[str, str],
            distractors: tuple[str, ...] = ()) -> dict[str, Any]:
    truth = _num(value) if isinstance(value, (int, float)) else str(value)
    return dict(question=question, ground_truth=truth, answer=truth, subject=subject, stages=(),
                final_reasoning="answer_direct", distractors=distractors, hints=hints)


# recovery ----------------------------------------------------------------------------------------

_REPORT_METRICS = (
    ("orders_shipped", "orders shipped", "How many orders shipped on {d}?"),
    ("new_tickets", "new tickets", "How many new tickets were opened on {d}?"),
    ("revenue", "revenue", "What was the revenue on {d}?"),
)


def _build_retry(world: World, j: int, rng: random.Random) -> dict[str, Any]:
    rep = world.reports[j // len(_REPORT_METRICS)]
    col, label, q = _REPORT_METRICS[j % len(_REPORT_METRICS)]
    value = getattr(rep, col)
    answer = f"${value:,.2f}" if col == "revenue" else str(value)
    subject = f"the {label} on {rep.day}"
    q = rng.choice((
        "According to the archived daily report {p}: " + q,
        "Check the archived report at {p}. " + q,
    )).format(p=rep.path, d=rep.day)
    hints = {"path": rep.path, "label": label, "subject": subject}
    call = Call("read_file", {"path": rep.path})
    return dict(
        question=q,
        ground_truth=_num(value),
        answer=answer,
        subject=subject,
        stages=(Stage("read_archive", call, hints, expect_error=True), Stage("retry", call, hints)),
    )


_TICKET_FIELDS = (("status", TICKET_STATUSES), ("priority", PRIORITIES), ("subject", TICKET_SUBJECTS))


def _build_fallback(world: World, j: int, rng: random.Random) -> dict[str, Any]:
    t = world.tickets[j // len(_TICKET_FIELDS)]
    col, pool = _TICKET_FIELDS[j % len(_TICKET_FIELDS)]
    path = f"/exports/tickets/{t.id}.json"
    value = getattr(t, col)
    subject = f"the {col} of ticket {t.id}"
    q = rng.choice((
        "The export of ticket {t} is at {p}. What is the ticket's {c}?",
        "Open {p} and tell me the {c} of ticket {t}.",
    )).format(t=t.id, p=path, c=col)
    hints = {"path": path, "key": t.id, "column": col, "table": "tickets", "subject": subject}
    return dict(
        question=q,
        ground_truth=value,
        answer=value,
        subject=subject,
        stages=(
            Stage("read_export", Call("read_file", {"path": path}), hints, expect_error=True),
            Stage("fallback_db", Call("query_db", {"sql": _sql_lookup(col, "tickets", t.id)}), hints),
        ),
        distractors=_pick_other(rng, pool, value),
    )


# --- the suite ------------------------------------------------------------------------------------


def _families(world: World) -> dict[str, Family]:
    w = world
    return {
        "lookup": Family("lookup", w, [
            _Subtype("customer", len(w.customers) * len(_CUSTOMER_ATTRS), _lookup_builder("customer")),
            _Subtype("product", len(w.products) * len(_PRODUCT_ATTRS), _lookup_builder("product")),
            _Subtype("ticket", len(w.tickets) * len(_TICKET_ATTRS), _lookup_builder("ticket")),
            _Subtype("order", len(w.orders) * len(_ORDER_ATTRS), _lookup_builder("order")),
        ]),
        "search_read": Family("search_read", w, [
            _Subtype("project", len(w.projects) * len(_PROJECT_ATTRS), _build_search_read),
        ]),
        "query_compute": Family("query_compute", w, [
            _Subtype("order_discount", len(w.orders) * len(_DISCOUNTS), _build_order_discount),
            _Subtype("customer_avg", len(w.customers), _build_customer_avg),
        ]),
        "multi_hop": Family("multi_hop", w, [
            _Subtype("sponsor", len(w.projects) * len(_SPONSOR_ATTRS), _build_multi_hop),
        ]),
        "no_tools": Family("no_tools", w, [
            _Subtype("add", 100 * 100, _build_add),
            _Subtype("crates", 40 * 25, _build_crates),
            _Subtype("convert", 500 + 200, _build_convert),
            _Subtype("weekday", 7 * 30, _build_weekday),
            _Subtype("word", len(CODE_WORDS) * 2, _build_word),
        ]),
        "recovery": Family("recovery", w, [
            _Subtype("retry", len(w.reports) * len(_REPORT_METRICS), _build_retry),
            _Subtype("fallback", len(w.tickets) * len(_TICKET_FIELDS), _build_fallback),
        ]),
    }


class Suite:
    """Every family over one world; look tasks up by id, iterate a split, or sample."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.families: dict[str, Family] = _families(world)
        self._prefix = f"w{world.seed}." if world.seed != 0 else ""

    def sizes(self) -> dict[str, int]:
        return {name: fam.size for name, fam in self.families.items()}

    def instance(self, family: str, index: int) -> Task:
        try:
            fam = self.families[family]
        except KeyError:
            raise KeyError(f"unknown task family {family!r}; families: {', '.join(self.families)}") from None
        return fam.instance(index)

    def get(self, task_id: str) -> Task:
        """The task with this id; raises KeyError with the reason when there is none."""
        rest = task_id
        if self._prefix:
            if not rest.startswith(self._prefix):
                raise KeyError(f"task {task_id!r} is not from world {self.world.seed}")
            rest = rest[len(self._prefix):]
        family, _, idx = rest.rpartition("-")
        if family not in self.families or not idx.isdigit():
            raise KeyError(f"no task {task_id!r} (ids look like {self.families['lookup'].task_id(123)})")
        index = int(idx)
        if index >= self.families[family].size or self.families[family].task_id(index) != task_id:
            raise KeyError(f"no task {task_id!r}")
        return self.families[family].instance(index)

    def iter_split(self, split: str, family: str | None = None, limit: int | None = None) -> Iterator[Task]:
        """Tasks of `split` ("train"|"heldout") in index order, optionally one family, at most `limit`."""
        names = [family] if family else list(self.families)
        n = 0
        for name in names:
            fam = self.families[name]
            for i in range(fam.size):
                if limit is not None and n >= limit:
                    return
                if split_of(fam.task_id(i)) == split:
                    n += 1
                    yield fam.instance(i)

    def sample(
        self,
        rng: random.Random,
        n: int,
        *,
        split: str = "train",
        families: Sequence[str] | None = None,
    ) -> list[Task]:
        """`n` tasks drawn with `rng`: families in rotation (shuffled per round), random instances.

        `split` is "train", "heldout" or "all".
        """
        names = list(families or self.families)
        for name in names:
            if name not in self.families:
                raise KeyError(f"unknown task family {name!r}; families: {', '.join(self.families)}")
        if split not in ("train", "heldout", "all"):
            raise ValueError(f"split must be train, heldout or all, not {split!r}")
        out: list[Task] = []
        order: list[str] = []
        while len(out) < n:
            if not order:
                order = list(names)
                rng.shuffle(order)
            fam = self.families[order.pop()]
            while True:
                i = rng.randrange(fam.size)
                if split == "all" or split_of(fam.task_id(i)) == split:
                    break
            out.append(fam.instance(i))
        return out


@lru_cache(maxsize=8)
def get_suite(world_seed: int = 0) -> Suite:
    """The suite over `get_world(world_seed)`, built once per process."""
    return Suite(get_world(world_seed))
