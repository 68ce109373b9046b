"""The deployment files agree with the code: docker-compose.yml, deploy/prometheus, deploy/grafana, Dockerfile.

Pure and fast (no Docker, no broker):
- every metric in every dashboard query is one the services export (collected by instantiating
  `StreamsMetrics`, `TrainerMetrics` and `RouterMetrics` and reading their registries), counters and
  histogram buckets are only used through rate()/increase(), histogram_quantile() only over `_bucket`
  series with `le` kept, and every `by (...)` / legend label is a label of the metrics queried;
- every datasource reference in the dashboards is the provisioned one (pinned uid);
- every stillflow service's `command` parses with `stillflow.cli.build_parser()`; every `STILLFLOW_`
  variable names a field of that command's settings model, and the service's environment validates;
- every Prometheus target names a compose service and the port that service listens on (per its
  settings and flags), on an address reachable from the network; every service exporting metrics is
  scraped;
- `docker compose config` accepts the file (only where a Docker engine answers: skipped otherwise).
"""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DATASOURCES = ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = ROOT / "deploy" / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
STILLFLOW_IMAGE = "stillflow:local"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# labels Prometheus adds at scrape time, plus the histogram bucket label
SCRAPE_LABELS = {"instance", "job", "le"}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# -- what the code exports -------------------------------------------------------------------------


def _exported() -> tuple[dict[str, str], dict[str, set[str]]]:
    """(sample name -> metric type, sample name -> label names) of every metric the services export."""
    from router.metrics import RouterMetrics
    from streams.metrics import StreamsMetrics
    from streams.otel.receiver import ReceiverMetrics
    from trainer.metrics import TrainerMetrics

    suffixes = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}
    types_: dict[str, str] = {}
    labels: dict[str, set[str]] = {}
    for metrics in (StreamsMetrics(), TrainerMetrics(), RouterMetrics(), ReceiverMetrics()):
        family_labels = {
            collector._name: set(getattr(collector, "_labelnames", ()))  # the collectors' declared label names
            for collector in vars(metrics).values() if hasattr(collector, "_name")
        }
        for family in metrics.registry.collect():
            assert family.type in suffixes, f"{family.name}: unexpected metric type {family.type}"
            for suffix in suffixes[family.type]:
                name = family.name + suffix
                assert name not in types_, f"{name} is exported twice"
                types_[name] = family.type
                labels[name] = family_labels.get(family.name, family_labels.get(family.name + "_total", set()))
    return types_, labels


EXPORTED, LABELS = _exported()


# -- the dashboards ---------------------------------------------------------------------------------


def _dashboard(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in board.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return out


def _queries() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(dashboard file, panel, target) for every query of every dashboard."""
    return [(path.name, panel, target) for path in DASHBOARDS for panel in _panels(_dashboard(path))
            for target in panel.get("targets", [])]


_METRIC = re.compile(r"\bstillflow_[a-z0-9_]+\b")
_RANGE_FN = re.compile(r"\b(?:rate|irate|increase)\(\s*$")


def _strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def test_dashboards_exist_and_are_distinct() -> None:
    assert {p.name for p in DASHBOARDS} >= {"pipeline.json", "datasets.json", "training.json", "router.json"}
    uids = [_dashboard(p)["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids)), f"dashboard uids repeat: {uids}"
    for path in DASHBOARDS:
        ids = [p["id"] for p in _panels(_dashboard(path))]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"


def test_every_dashboard_metric_is_exported() -> None:
    queries = _queries()
    assert len(queries) > 30
    missing: list[str] = []
    for board, panel, target in queries:
        expr = _strip_strings(target["expr"])
        names = _METRIC.findall(expr)
        assert names, f"{board} / {panel['title']}: no stillflow metric in {expr!r}"
        missing += [f"{board} / {panel['title']}: {name}" for name in names if name not in EXPORTED]
    assert not missing, "metrics no service exports:\n" + "\n".join(missing)


def test_dashboard_queries_use_each_metric_type_correctly() -> None:
    problems: list[str] = []
    for board, panel, target in _queries():
        expr = _strip_strings(target["expr"])
        where = f"{board} / {panel['title']}: {expr}"
        for match in _METRIC.finditer(expr):
            name, kind = match.group(0), EXPORTED.get(match.group(0))
            in_range_fn = bool(_RANGE_FN.search(expr[: match.start()]))
            if kind == "gauge" and in_range_fn:
                problems.append(f"{where}: rate/increase of the gauge {name}")
            if kind in ("counter", "histogram") and not in_range_fn:
                problems.append(f"{where}: the {kind} series {name} is used without rate()/increase()")
            if name.endswith("_bucket") and "histogram_quantile(" not in expr and panel["type"] != "heatmap":
                problems.append(f"{where}: buckets outside histogram_quantile() and not in a heatmap")
        if "histogram_quantile(" in expr:
            if "_bucket[" not in expr:
                problems.append(f"{where}: histogram_quantile() without _bucket series")
            if not re.search(r"by \([^)]*\ble\b", expr):
                problems.append(f"{where}: histogram_quantile() must keep the le label")
    assert not problems, "\n".join(problems)


def test_dashboard_labels_exist_on_the_metrics_queried() -> None:
    problems: list[str] = []
    for board, panel, target in _queries():
        expr = _strip_strings(target["expr"])
        known = set(SCRAPE_LABELS)
        for name in _METRIC.findall(expr):
            known |= LABELS.get(name, set())
        used = {lbl.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
                for lbl in group.split(",") if lbl.strip()}
        used |= set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", target.get("legendFormat", "")))
        used |= set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=~?\s*\"", expr))  # label matchers
        for label in sorted(used - known):
            problems.append(f"{board} / {panel['title']}: label {label!r} is not on {_METRIC.findall(expr)}")
    assert not problems, "\n".join(problems)


def _provisioned_uid() -> str:
    sources = _load(DATASOURCES)["datasources"]
    assert len(sources) == 1 and sources[0]["type"] == "prometheus"
    assert sources[0]["url"] == "http://prometheus:9090", "the datasource must reach the compose prometheus service"
    return sources[0]["uid"]


def _datasource_refs(node: Any, path: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                out.append((f"{path}.{key}", value))
            out += _datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _datasource_refs(value, f"{path}[{i}]")
    return out


def test_every_datasource_reference_is_the_provisioned_uid() -> None:
    uid = _provisioned_uid()
    for path in DASHBOARDS:
        board = _dashboard(path)
        assert "__inputs" not in board, f"{path.name}: import-time inputs; reference the uid {uid!r} instead"
        for panel in _panels(board):
            if panel["type"] != "row":
                assert "datasource" in panel, f"{path.name} / {panel['title']}: no datasource"
                assert all("datasource" in t for t in panel["targets"]), f"{path.name} / {panel['title']}"
        refs = _datasource_refs(board)
        assert refs
        wrong = [(where, ref) for where, ref in refs
                 if not (isinstance(ref, dict) and ref.get("uid") == uid and ref.get("type") == "prometheus")]
        assert not wrong, f"{path.name}: datasource references other than uid {uid!r}: {wrong}"


# -- docker-compose.yml ------------------------------------------------------------------------------

COMPOSE_DOC = _load(COMPOSE)
SERVICES: dict[str, dict[str, Any]] = COMPOSE_DOC["services"]
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|\$\$")


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with an empty shell environment (deterministic): the defaults."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        op, default = m.group(2), m.group(3) or ""
        assert op != ":?" and op != "?", f"{value!r}: a required variable makes `docker compose up` fail unset"
        return default if op in (":-", "-") else ""

    return _INTERPOLATION.sub(sub, value)


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: None if v is None else _interpolate(str(v)) for k, v in env.items()}


def _stillflow_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in SERVICES.items() if s.get("image") == STILLFLOW_IMAGE or "build" in s}


def _parse(command: list[str]) -> Any:
    from stillflow.cli import build_parser

    try:
        return build_parser().parse_args(command)
    except SystemExit as exc:  # argparse printed why on stderr
        raise AssertionError(f"`stillflow {' '.join(command)}` does not parse (exit {exc.code})") from None


def _settings_class(args: Any) -> type[BaseModel]:
    from router.settings import RouterSettings
    from sim.settings import SimSettings
    from stillflow.settings import StillflowSettings
    from streams.otel.settings import OtlpSettings
    from streams.settings import StreamsSettings
    from trainer.settings import TrainerSettings

    return {"streams": StreamsSettings, "trainer": TrainerSettings, "router": RouterSettings, "sim": SimSettings,
            "topics": StillflowSettings, "export": StreamsSettings, "train": TrainerSettings,
            "models": TrainerSettings, "otlp": OtlpSettings}[args.command]


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            model = _model_of(arg)
            if model is not None:
                return model
    return None


def _field_path_problem(cls: type[BaseModel], var: str) -> str | None:
    """None when STILLFLOW_A__B__C names the field a.b.c of `cls`; else why not."""
    parts = var.removeprefix("STILLFLOW_").lower().split("__")
    model: type[BaseModel] | None = cls
    for i, part in enumerate(parts):
        assert model is not None
        if part not in model.model_fields:
            return f"{var}: {model.__name__} has no field {part!r} (fields: {', '.join(model.model_fields)})"
        if i < len(parts) - 1:
            model = _model_of(model.model_fields[part].annotation)
            if model is None:
                return f"{var}: {'.'.join(parts[: i + 1])} is not a section"
    return None


def _service_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """(parsed args, the service's settings model instantiated from its compose environment)."""
    service = SERVICES[name]
    args = _parse(list(service["command"]))
    for var in [v for v in os.environ if v.startswith("STILLFLOW_")]:
        monkeypatch.delenv(var)
    for var, value in _environment(service).items():
        if value is not None and var.startswith("STILLFLOW_"):
            monkeypatch.setenv(var, value)
    return args, _settings_class(args)()


def test_compose_has_the_services() -> None:
    assert {"kafka", "topics", "streams", "otlp", "trainer", "router", "prometheus", "grafana", "sim-teacher",
            "sim-fleet"} <= set(SERVICES)
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert "sim" in SERVICES["sim-teacher"]["profiles"] and "sim" in SERVICES["sim-fleet"]["profiles"]
    for name, service in _stillflow_services().items():
        assert isinstance(service.get("command"), list), f"{name}: command must be a list (the entrypoint is stillflow)"


@pytest.mark.parametrize("name", sorted(_stillflow_services()))
def test_compose_command_is_a_real_stillflow_command(name: str) -> None:
    args = _parse(list(SERVICES[name]["command"]))
    assert callable(getattr(args, "func", None)), f"{name}: {SERVICES[name]['command']} runs no command"


@pytest.mark.parametrize("name", sorted(_stillflow_services()))
def test_compose_environment_names_real_settings(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service = SERVICES[name]
    env = _environment(service)
    args = _parse(list(service["command"]))
    cls = _settings_class(args)
    problems = [p for var in env if var.startswith("STILLFLOW_") and (p := _field_path_problem(cls, var))]
    assert not problems, f"{name} ({cls.__name__}):\n" + "\n".join(problems)
    _service_settings(name, monkeypatch)  # the values validate too (pydantic raises otherwise)


def test_compose_kafka_is_kraft_and_every_service_uses_it(monkeypatch: pytest.MonkeyPatch) -> None:
    kafka = _environment(SERVICES["kafka"])
    assert "controller" in (kafka["KAFKA_PROCESS_ROLES"] or "") and "broker" in (kafka["KAFKA_PROCESS_ROLES"] or "")
    internal = [x for x in (kafka["KAFKA_ADVERTISED_LISTENERS"] or "").split(",") if "//kafka:" in x]
    assert internal, "no listener advertised to in-network clients"
    address = internal[0].split("//", 1)[1]
    for name, service in _stillflow_services().items():
        if list(service["command"][:2]) == ["sim", "teacher-server"]:
            continue  # serves HTTP only
        _args, settings = _service_settings(name, monkeypatch)
        assert settings.kafka.bootstrap_servers == address, f"{name}: not on the compose Kafka ({address})"


def test_compose_registry_volume_is_shared_by_trainer_and_router(monkeypatch: pytest.MonkeyPatch) -> None:
    _a, trainer = _service_settings("trainer", monkeypatch)
    _b, router = _service_settings("router", monkeypatch)
    assert trainer.trainer.registry_dir == router.router.registry_dir
    assert trainer.trainer.model_name == router.router.model_name
    mount = f"{trainer.trainer.registry_dir}"
    for name in ("trainer", "router"):
        volumes = [v for v in SERVICES[name].get("volumes", []) if str(v).split(":")[1:2] == [mount]]
        assert volumes, f"{name}: nothing mounted at {mount}"
        assert volumes[0].split(":")[0] in (COMPOSE_DOC.get("volumes") or {}), f"{name}: {volumes[0]} is no named volume"
    shared = {v.split(":")[0] for n in ("trainer", "router") for v in SERVICES[n]["volumes"] if v.endswith(mount)}
    assert len(shared) == 1, f"trainer and router mount different volumes at {mount}: {shared}"


def test_sim_fleet_talks_to_the_router(monkeypatch: pytest.MonkeyPatch) -> None:
    args, settings = _service_settings("sim-fleet", monkeypatch)
    base_url = args.base_url or settings.sim.base_url
    _r, router = _service_settings("router", monkeypatch)
    assert base_url == f"http://router:{router.router.port}/v1"
    teacher = router.router.teacher.base_url
    t_args, t_settings = _service_settings("sim-teacher", monkeypatch)
    assert teacher == f"http://sim-teacher:{t_args.port or t_settings.sim.port}/v1", teacher


# -- prometheus ------------------------------------------------------------------------------------


def _listening(name: str, monkeypatch: pytest.MonkeyPatch) -> set[int]:
    """Ports service `name` listens on (on a non-loopback address), per its settings and flags."""
    service = SERVICES[name]
    if name not in _stillflow_services():  # third-party images: what the compose file exposes
        ports = {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}
        return ports | {int(str(p).split("/")[0]) for p in service.get("expose", [])}
    args, settings = _service_settings(name, monkeypatch)
    if args.command == "streams":
        s = settings.streams
        assert s.web_host not in LOOPBACK, f"{name}: faust web server bound to loopback ({s.web_host})"
        return {args.web_port if args.web_port is not None else s.web_port}
    if args.command == "trainer":
        from trainer.metrics import serve

        addr = inspect.signature(serve).parameters["addr"].default
        assert addr not in LOOPBACK, f"trainer metrics bound to loopback ({addr})"
        port = args.metrics_port if args.metrics_port is not None else settings.trainer.metrics_port
        assert port, f"{name}: trainer metrics are off (port 0)"
        return {port}
    if args.command == "router":
        host = args.host or settings.router.host
        assert host not in LOOPBACK, f"{name}: router bound to loopback ({host})"
        return {args.port if args.port is not None else settings.router.port}
    if args.command == "otlp":
        host = args.host or settings.otlp.host
        assert host not in LOOPBACK, f"{name}: OTLP receiver bound to loopback ({host})"
        return {args.port if args.port is not None else settings.otlp.port}
    if args.command == "sim" and args.sim_command == "teacher-server":
        host = args.host or settings.sim.host
        assert host not in LOOPBACK, f"{name}: sim teacher bound to loopback ({host})"
        return {args.port if args.port is not None else settings.sim.port}
    return set()


def _scrape_targets() -> list[tuple[str, str, str, int]]:
    """(job, metrics path, host, port) for every static and DNS target."""
    out: list[tuple[str, str, str, int]] = []
    for job in _load(PROMETHEUS)["scrape_configs"]:
        path = job.get("metrics_path", "/metrics")
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                out.append((job["job_name"], path, host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            assert dns.get("type", "SRV") == "A", f"{job['job_name']}: Docker's DNS answers A records, not SRV"
            out += [(job["job_name"], path, host, int(dns["port"])) for host in dns["names"]]
        assert not set(job) - {"job_name", "metrics_path", "static_configs", "dns_sd_configs", "scrape_interval",
                               "scrape_timeout", "scheme"}, f"{job['job_name']}: a discovery this test does not check"
    return out


def test_prometheus_targets_are_compose_services_on_their_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    targets = _scrape_targets()
    assert targets
    for job, path, host, port in targets:
        assert host in SERVICES, f"job {job}: {host} is not a compose service"
        assert "profiles" not in SERVICES[host], f"job {job}: {host} runs only in a profile"
        listening = _listening(host, monkeypatch)
        assert port in listening, f"job {job}: {host} listens on {sorted(listening)}, not {port}"
        if host in _stillflow_services():
            assert path == "/metrics", f"job {job}: stillflow services serve /metrics, not {path}"


def test_every_service_exporting_metrics_is_scraped() -> None:
    scraped = {host for _job, _path, host, _port in _scrape_targets()}
    exporting = {name for name, s in _stillflow_services().items()
                 if s["command"][0] in ("streams", "otlp", "trainer", "router")}
    assert exporting == {"streams", "otlp", "trainer", "router"}
    assert exporting <= scraped, f"not scraped: {sorted(exporting - scraped)}"


def test_prometheus_and_grafana_mounts_match_their_configs() -> None:
    prom = SERVICES["prometheus"]
    config = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    assert Path(config).parent.as_posix() in mounts
    assert (ROOT / mounts[Path(config).parent.as_posix()] / Path(config).name).resolve() == PROMETHEUS
    grafana = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    assert (ROOT / grafana["/etc/grafana/provisioning"]).resolve() == DATASOURCES.parents[1]
    provider_path = _load(PROVIDERS)["providers"][0]["options"]["path"]
    assert (ROOT / grafana[provider_path]).resolve() == DASHBOARDS[0].parent
    home = _environment(SERVICES["grafana"]).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert Path(home).parent.as_posix() == provider_path and (DASHBOARDS[0].parent / Path(home).name).exists()


# -- Dockerfile --------------------------------------------------------------------------------------


def test_dockerfile_pins_the_projects_torch_and_runs_stillflow() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pins = set(re.findall(r"torch==([0-9.]+)", pyproject))
    assert len(pins) == 1
    assert f"torch=={next(iter(pins))} --index-url https://download.pytorch.org/whl/cpu" in text
    assert text.index("torch==") < text.index('.[all]'), "torch must be installed before the project"
    assert 'ENTRYPOINT ["stillflow"]' in text
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)


# -- with a Docker engine ----------------------------------------------------------------------------


def _docker_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20, check=False)
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"`docker info` failed: {lines[-1] if lines else info.returncode}"
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=20, check=False)
    if compose.returncode != 0:
        return "the docker compose plugin is not installed"
    return None


def test_docker_compose_config_accepts_the_file() -> None:
    problem = _docker_problem()
    if problem:
        pytest.skip(problem)
    for profile in ([], ["--profile", "sim"]):
        result = subprocess.run(["docker", "compose", "-f", str(COMPOSE), *profile, "config", "--quiet"],
                                capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
        assert result.returncode == 0, result.stderr
