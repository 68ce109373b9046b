"""The simulated company the agents work in: a seeded, deterministic world.

Exports `World` (build one with `get_world(seed)`, cached per seed), the row dataclasses
(`Customer`, `Product`, `Order`, `Ticket`, `Project`, `DailyReport`, `Document`) and `stable_int`,
the process-independent hash every seeded choice in `sim` is derived from.

The world holds
- a corpus of short documents (project briefs and handbook pages) with a small inverted index;
- a virtual file tree (`/docs`, `/archive`, `/exports`, `/README.md`, ...);
- an in-memory SQLite database (customers, orders, products, tickets), opened read-only.

Everything is a pure function of the seed: the same seed gives the same rows, files and documents in
every process (no `hash()`, no wall clock).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache

__all__ = [
    "stable_int",
    "stable_hex",
    "Customer",
    "Product",
    "Order",
    "Ticket",
    "Project",
    "DailyReport",
    "Document",
    "SearchHit",
    "World",
    "get_world",
    "tokenize",
]


def stable_int(*parts: object) -> int:
    """A 64-bit integer derived from `parts` (same in every process, unlike `hash`)."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def stable_hex(*parts: object, n: int = 16) -> str:
    return hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=max(1, n // 2 + 1)).hexdigest()[:n]


# --- vocabulary -----------------------------------------------------------------------------------

FIRST_NAMES = (
    "Ada Amir Anya Ben Bea Carla Chen Dana Diego Elena Emeka Farah Felix Gita Hana Hugo Ines Ivan Jada "
    "Jonas Kai Kenji Lara Leon Maya Mateo Nia Noah Nora Omar Priya Quinn Rosa Ravi Sara Sven Tara Theo "
    "Uma Vera Wes Xena Yara Yusuf Zoe Malik Ingrid Pablo Lina Oscar"
).split()
LAST_NAMES = (
    "Abbott Baker Castillo Dube Eriksen Fischer Garcia Haddad Ito Jensen Kowalski Lopez Moreau Nakamura "
    "Okafor Petrov Quinlan Rossi Schmidt Tanaka Ueda Varga Whitfield Xu Yilmaz Zhang Novak Silva Brennan "
    "Costa Dalton Ferreira Grant Holm Ibsen Kaur Lindqvist Mensah Nilsen Ortega Park Reyes Sato Turner"
).split()
CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Osaka", "Denver", "Lyon", "Porto", "Austin", "Krakow", "Dublin",
    "Seoul", "Lagos", "Quito", "Tallinn", "Perth", "Calgary", "Bergen", "Hanoi", "Lima", "Leeds",
    "Turin", "Graz", "Accra", "Busan", "Malmo", "Tucson", "Cork", "Ghent", "Pune", "Sapporo",
)
TIERS = ("bronze", "silver", "gold", "platinum")
CATEGORIES = ("kitchen", "garden", "office", "outdoor", "lighting", "storage", "audio", "bedding")
PRODUCT_ADJ = (
    "Compact Deluxe Classic Smart Rugged Slim Quiet Folding Modular Heated Wireless Bamboo Copper "
    "Ceramic Portable Nordic Urban Solar Magnetic Velvet"
).split()
PRODUCT_NOUN = (
    "Kettle Lamp Planter Desk Chair Speaker Shelf Blanket Lantern Grinder Organizer Bench Fan Clock "
    "Tray Crate Pillow Hammock Stool Rack"
).split()
ORDER_STATUSES = ("pending", "shipped", "delivered", "returned", "cancelled")
TICKET_STATUSES = ("open", "pending", "resolved", "closed", "escalated")
PRIORITIES = ("low", "normal", "high", "urgent")
TICKET_SUBJECTS = (
    "late delivery", "damaged item", "refund request", "wrong size", "missing parts", "billing question",
    "address change", "warranty claim", "login problem", "invoice copy", "duplicate charge", "gift wrap",
)
REGIONS = ("EMEA", "APAC", "LATAM", "North America", "Nordics", "DACH")
PROJECT_STATUSES = ("active", "paused", "completed", "planning", "at risk")
DOMAINS = (
    "logistics", "pricing", "customer loyalty", "warehouse automation", "returns", "search ranking",
    "supplier onboarding", "fraud detection", "mobile checkout", "demand forecasting", "packaging",
    "carbon reporting",
)
CODE_WORDS = (
    "falcon heron osprey kestrel raven condor puffin ibis egret swift lark finch otter badger lynx "
    "marten bison moose orca narwhal walrus gecko iguana cobra viper mamba python tundra cedar maple "
    "willow aspen birch juniper sequoia cypress hemlock larch spruce comet nova quasar pulsar nebula "
    "vega sirius altair rigel deneb lyra orion draco aquila cygnus polaris zephyr mistral sirocco "
    "monsoon"
).split()
HANDBOOK = (
    ("refund-policy", "Refund policy",
     "Customers may return any item within 30 days of delivery for a full refund. Refunds are issued to "
     "the original payment method within 5 business days. Items marked final sale cannot be returned."),
    ("shipping-times", "Shipping times",
     "Standard shipping takes 3 to 5 business days. Express shipping takes 1 to 2 business days. "
     "Orders placed before 2 pm ship the same day."),
    ("support-hours", "Support hours",
     "The support desk is staffed from 8 am to 8 pm on weekdays. Urgent tickets are paged to the on-call "
     "engineer at any hour."),
    ("ticket-priorities", "Ticket priorities",
     "Tickets are triaged as low, normal, high or urgent. Urgent tickets must receive a first response "
     "within one hour; high within four hours."),
    ("loyalty-tiers", "Loyalty tiers",
     "Customers progress from bronze to silver, gold and platinum based on yearly spend. Platinum "
     "customers get free express shipping."),
    ("data-access", "Data access",
     "Ticket exports under /exports are restricted to the compliance team. Everyone else should read "
     "ticket data from the tickets table in the database."),
    ("archive", "Archived reports",
     "Daily reports older than one week move to cold storage under /archive/reports. The first read of "
     "an archived file triggers a restore and may time out; reading it again succeeds."),
    ("discounts", "Discount rules",
     "Promotional discounts apply to the order total before tax. Discounts do not stack; the largest "
     "applicable discount wins."),
    ("security", "Security practices",
     "Never run destructive commands against production systems. The analytics database is read-only; "
     "write access requires a change ticket."),
    ("project-briefs", "Project briefs",
     "Every project has a brief under /docs/projects with its owner, launch year, budget, region, status "
     "and the sponsoring customer account."),
)

_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_STOP = frozenset("a an the of and or to in on for is are was be by with at as it its this that from".split())


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens; hyphenated codes ("falcon-17") are kept whole and also split."""
    out: list[str] = []
    for tok in _TOKEN.findall(text.lower()):
        if tok in _STOP:
            continue
        out.append(tok)
        if "-" in tok:
            out.extend(p for p in tok.split("-") if p and p not in _STOP)
    return out


# --- rows ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Customer:
    id: str
    name: str
    email: str
    city: str
    tier: str
    signup_year: int


@dataclass(frozen=True)
class Product:
    id: str
    name: str
    category: str
    price: float
    stock: int


@dataclass(frozen=True)
class Order:
    id: str
    customer_id: str
    product_id: str
    quantity: int
    status: str
    order_date: str


@dataclass(frozen=True)
class Ticket:
    id: str
    customer_id: str
    order_id: str
    subject: str
    status: str
    priority: str


@dataclass(frozen=True)
class Project:
    codename: str  # e.g. "Falcon-17"
    domain: str
    owner: str
    launch_year: int
    budget: int
    region: str
    status: str
    sponsor_id: str  # a customer id

    @property
    def path(self) -> str:
        return f"/docs/projects/{self.codename.lower()}.md"


@dataclass(frozen=True)
class DailyReport:
    day: str  # ISO date
    orders_shipped: int
    new_tickets: int
    revenue: float

    @property
    def path(self) -> str:
        return f"/archive/reports/{self.day}.txt"


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    path: str
    snippet: str  # what search shows (first sentence)
    text: str  # the whole file


@dataclass(frozen=True)
class SearchHit:
    doc: Document
    score: float


# --- the world -----------------------------------------------------------------------------------


@dataclass(repr=False)
class World:
    """All of the simulated company's data. Build with `World.build(seed)` or `get_world(seed)`."""

    seed: int
    customers: list[Customer]
    products: list[Product]
    orders: list[Order]
    tickets: list[Ticket]
    projects: list[Project]
    reports: list[DailyReport]
    documents: list[Document]
    files: dict[str, str]
    customer_by_id: dict[str, Customer] = field(default_factory=dict)
    product_by_id: dict[str, Product] = field(default_factory=dict)
    order_by_id: dict[str, Order] = field(default_factory=dict)
    orders_by_customer: dict[str, list[Order]] = field(default_factory=dict)
    _index: dict[str, list[tuple[int, int]]] = field(default_factory=dict, repr=False)
    _doc_len: list[int] = field(default_factory=list, repr=False)
    _dirs: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _db: sqlite3.Connection | None = field(default=None, repr=False)
    _db_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    N_CUSTOMERS = 2000
    N_PRODUCTS = 400
    N_ORDERS = 6000
    N_TICKETS = 3000
    N_PROJECTS = 2500
    N_REPORTS = 1000

    # ---- construction ----

    def __repr__(self) -> str:
        return f"World(seed={self.seed}, {len(self.customers)} customers, {len(self.documents)} documents)"

    @classmethod
    def build(cls, seed: int = 0) -> World:
        rng = random.Random(stable_int("world", seed))
        customers = []
        used_emails: set[str] = set()
        for k in range(cls.N_CUSTOMERS):
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            email = f"{first}.{last}".lower() + "@example.com"
            n = 2
            while email in used_emails:
                email = f"{first}.{last}{n}".lower() + "@example.com"
                n += 1
            used_emails.add(email)
            customers.append(
                Customer(
                    id=f"C-{k + 1:05d}",
                    name=f"{first} {last}",
                    email=email,
                    city=rng.choice(CITIES),
                    tier=rng.choices(TIERS, weights=(5, 4, 2, 1))[0],
                    signup_year=rng.randint(2012, 2024),
                )
            )
        products = []
        names_used: set[str] = set()
        for k in range(cls.N_PRODUCTS):
            name = f"{rng.choice(PRODUCT_ADJ)} {rng.choice(PRODUCT_NOUN)}"
            while name in names_used:
                name = f"{rng.choice(PRODUCT_ADJ)} {rng.choice(PRODUCT_NOUN)}"
                if len(names_used) >= len(PRODUCT_ADJ) * len(PRODUCT_NOUN):  # pragma: no cover
                    break
            if name in names_used:
                name = f"{name} {k}"
            names_used.add(name)
            products.append(
                Product(
                    id=f"P-{k + 1:04d}",
                    name=name,
                    category=rng.choice(CATEGORIES),
                    price=round(rng.uniform(4, 400), 2),
                    stock=rng.randint(0, 900),
                )
            )
        start = date(2023, 1, 1)
        orders = []
        first_pass = list(customers)  # every customer has at least one order
        rng.shuffle(first_pass)
        for k in range(cls.N_ORDERS):
            cust = first_pass[k] if k < len(first_pass) else rng.choice(customers)
            orders.append(
                Order(
                    id=f"O-{k + 1:05d}",
                    customer_id=cust.id,
                    product_id=rng.choice(products).id,
                    quantity=rng.randint(1, 12),
                    status=rng.choices(ORDER_STATUSES, weights=(2, 4, 8, 1, 1))[0],
                    order_date=(start + timedelta(days=rng.randint(0, 700))).isoformat(),
                )
            )
        tickets = []
        for k in range(cls.N_TICKETS):
            order = rng.choice(orders)
            tickets.append(
                Ticket(
                    id=f"T-{k + 1:05d}",
                    customer_id=order.customer_id,
                    order_id=order.id,
                    subject=rng.choice(TICKET_SUBJECTS),
                    status=rng.choice(TICKET_STATUSES),
                    priority=rng.choices(PRIORITIES, weights=(3, 5, 2, 1))[0],
                )
            )
        codes = [f"{w.capitalize()}-{n}" for w in CODE_WORDS for n in range(1, 100)]
        rng.shuffle(codes)
        projects = []
        for k in range(cls.N_PROJECTS):
            projects.append(
                Project(
                    codename=codes[k],
                    domain=rng.choice(DOMAINS),
                    owner=f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
                    launch_year=rng.randint(2015, 2025),
                    budget=rng.randint(5, 500) * 10_000,
                    region=rng.choice(REGIONS),
                    status=rng.choice(PROJECT_STATUSES),
                    sponsor_id=rng.choice(customers).id,
                )
            )
        reports = []
        day0 = date(2021, 1, 1)
        for k in range(cls.N_REPORTS):
            reports.append(
                DailyReport(
                    day=(day0 + timedelta(days=k)).isoformat(),
                    orders_shipped=rng.randint(40, 400),
                    new_tickets=rng.randint(3, 90),
                    revenue=round(rng.uniform(2_000, 60_000), 2),
                )
            )

        documents: list[Document] = []
        files: dict[str, str] = {}
        for p in projects:
            snippet = f"{p.codename} is a {p.domain} initiative."
            text = (
                f"# Project {p.codename}\n\n{snippet} This brief lists its key facts.\n\n"
                f"- Owner: {p.owner}\n- Launch year: {p.launch_year}\n- Budget: ${p.budget:,}\n"
                f"- Region: {p.region}\n- Status: {p.status}\n- Sponsor: customer {p.sponsor_id}\n"
            )
            documents.append(Document(f"proj-{p.codename.lower()}", f"Project {p.codename}", p.path, snippet, text))
            files[p.path] = text
        for slug, title, body in HANDBOOK:
            path = f"/docs/handbook/{slug}.md"
            text = f"# {title}\n\n{body}\n"
            documents.append(Document(f"hb-{slug}", title, path, body.split(". ")[0] + ".", text))
            files[path] = text
        for r in reports:
            files[r.path] = (
                f"Daily report {r.day}\norders shipped: {r.orders_shipped}\nnew tickets: {r.new_tickets}\n"
                f"revenue: ${r.revenue:,.2f}\n"
            )
        for t in tickets:
            files[f"/exports/tickets/{t.id}.json"] = "{}"  # present but access-restricted
        files["/README.md"] = (
            "# Acme Retail shared drive\n\nProject briefs live in /docs/projects, the handbook in "
            "/docs/handbook, archived daily reports in /archive/reports. Ticket exports in /exports are "
            "restricted. Customer, order, product and ticket data is in the analytics database.\n"
        )
        world = cls(
            seed=seed,
            customers=customers,
            products=products,
            orders=orders,
            tickets=tickets,
            projects=projects,
            reports=reports,
            documents=documents,
            files=files,
        )
        world._finish()
        return world

    def _finish(self) -> None:
        self.customer_by_id = {c.id: c for c in self.customers}
        self.product_by_id = {p.id: p for p in self.products}
        self.order_by_id = {o.id: o for o in self.orders}
        self.orders_by_customer = {}
        for o in self.orders:
            self.orders_by_customer.setdefault(o.customer_id, []).append(o)
        index: dict[str, dict[int, int]] = {}
        self._doc_len = []
        for i, d in enumerate(self.documents):
            toks = tokenize(d.title + " " + d.text)
            self._doc_len.append(len(toks))
            for tok in toks:
                posting = index.setdefault(tok, {})
                posting[i] = posting.get(i, 0) + 1
        self._index = {tok: sorted(p.items()) for tok, p in index.items()}
        self._dirs = self._directories()

    def _directories(self) -> dict[str, list[str]]:
        dirs: dict[str, set[str]] = {}
        for path in self.files:
            parts = path.strip("/").split("/")
            for depth in range(len(parts)):
                parent = "/" + "/".join(parts[:depth])
                parent = parent if parent != "/" else "/"
                child = parts[depth] + ("/" if depth < len(parts) - 1 else "")
                dirs.setdefault(parent, set()).add(child)
        return {d: sorted(c) for d, c in dirs.items()}

    # ---- search ----

    def search(self, query: str, top_k: int = 3) -> list[SearchHit]:
        """tf-idf over the corpus; ties broken by document order (deterministic)."""
        n_docs = len(self.documents)
        scores: dict[int, float] = {}
        for tok in dict.fromkeys(tokenize(query)):
            posting = self._index.get(tok)
            if not posting:
                continue
            idf = math.log(1 + n_docs / len(posting))
            for doc, tf in posting:
                scores[doc] = scores.get(doc, 0.0) + idf * (1 + math.log(tf))
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:top_k]
        return [SearchHit(self.documents[i], round(s, 3)) for i, s in ranked]

    # ---- files ----

    def is_dir(self, path: str) -> bool:
        return path in self._dirs

    def list_dir(self, path: str) -> list[str]:
        return list(self._dirs.get(path, []))

    # ---- database ----

    @property
    def db(self) -> sqlite3.Connection:
        """The read-only in-memory database (shared; use `db_lock` around cursor work)."""
        if self._db is None:
            self._db = self._build_db()
        return self._db

    @property
    def db_lock(self) -> threading.Lock:
        return self._db_lock

    def _build_db(self) -> sqlite3.Connection:
        con = sqlite3.connect(":memory:", check_same_thread=False)
        con.executescript(
            """
            CREATE TABLE customers (id TEXT PRIMARY KEY, name TEXT, email TEXT, city TEXT, tier TEXT,
                                    signup_year INTEGER);
            CREATE TABLE products (id TEXT PRIMARY KEY, name TEXT, category TEXT, price REAL, stock INTEGER);
            CREATE TABLE orders (id TEXT PRIMARY KEY, customer_id TEXT REFERENCES customers(id),
                                 product_id TEXT REFERENCES products(id), quantity INTEGER, status TEXT,
                                 order_date TEXT);
            CREATE TABLE tickets (id TEXT PRIMARY KEY, customer_id TEXT REFERENCES customers(id),
                                  order_id TEXT REFERENCES orders(id), subject TEXT, status TEXT,
                                  priority TEXT);
            CREATE INDEX orders_customer ON orders(customer_id);
            """
        )
        con.executemany(
            "INSERT INTO customers VALUES (?,?,?,?,?,?)",
            [(c.id, c.name, c.email, c.city, c.tier, c.signup_year) for c in self.customers],
        )
        con.executemany(
            "INSERT INTO products VALUES (?,?,?,?,?)",
            [(p.id, p.name, p.category, p.price, p.stock) for p in self.products],
        )
        con.executemany(
            "INSERT INTO orders VALUES (?,?,?,?,?,?)",
            [(o.id, o.customer_id, o.product_id, o.quantity, o.status, o.order_date) for o in self.orders],
        )
        con.executemany(
            "INSERT INTO tickets VALUES (?,?,?,?,?,?)",
            [(t.id, t.customer_id, t.order_id, t.subject, t.status, t.priority) for t in self.tickets],
        )
        con.commit()
        con.execute("PRAGMA query_only = ON")
        return con

    def schema_summary(self) -> str:
        return (
            "customers(id, name, email, city, tier, signup_year); products(id, name, category, price, stock); "
            "orders(id, customer_id, product_id, quantity, status, order_date); "
            "tickets(id, customer_id, order_id, subject, status, priority)"
        )


@lru_cache(maxsize=8)
def get_world(seed: int = 0) -> World:
    """The world for `seed`, built once per process."""
    return World.build(seed)
