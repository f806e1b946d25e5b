"""docker-compose.yaml without Docker: parsed, and checked against the installed Airflow.

Every Airflow service's command must be one the installed CLI accepts (Airflow's own argparse
parser, options included), every AIRFLOW__SECTION__KEY must name a real option, volumes, ports,
env and depends_on must be consistent, every queue a task is routed to must have a worker, and
no secret may be written in the file (all come from .env, documented by .env.example)."""
from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
AIRFLOW_SERVICES = [n for n, s in SERVICES.items() if "build" in s]
SECRET = re.compile(r"PASSWORD|SECRET|FERNET|_TOKEN$|_KEY$")
CUSTOM_SECTIONS = {"reviews"}  # ours: [reviews] training_queue / serving_queue (include/pipeline/defaults.py)


def _parser():
    from airflow.cli.cli_parser import get_parser

    return get_parser()


def _command_lines(service: dict) -> list[list[str]]:
    """The argv(s) a service runs: its command, with the image's entrypoint rule (a first word that
    is not ``airflow``, ``python``, ``bash``... is an airflow subcommand), ``bash -c`` split on ``&&``."""
    cmd = service.get("command")
    if cmd is None:
        return []
    argv = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
    if service.get("entrypoint") == "/bin/bash" and argv[0] == "-c":
        return [shlex.split(part) for part in argv[1].split("&&")]
    return [argv]


def _check_airflow_argv(argv: list[str]) -> str | None:
    parser = _parser()
    try:
        parser.parse_args(argv)
    except SystemExit:
        return f"`airflow {' '.join(argv)}` is not a command of the installed Airflow"
    return None


def _check_argv(argv: list[str]) -> str | None:
    head = argv[0]
    if head == "airflow":
        return _check_airflow_argv(argv[1:])
    if head in ("python", "python3") and argv[1] == "-m":
        return None if importlib.util.find_spec(argv[2]) else f"module {argv[2]} not found"
    if head in ("mkdir", "chown"):
        return None
    return _check_airflow_argv(argv)  # the airflow image's entrypoint runs `airflow <command>`


def test_the_stack_has_every_service_the_issue_names():
    expected = {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "airflow-worker-training",
                "model-endpoint"}
    assert expected <= set(SERVICES), expected - set(SERVICES)


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_each_airflow_service_command_exists_in_the_installed_airflow_cli(name):
    lines = _command_lines(SERVICES[name])
    assert lines, f"{name} has no command"
    errors = [e for argv in lines if (e := _check_argv(argv))]
    assert not errors, errors


def test_a_command_the_cli_does_not_know_is_caught():
    assert _check_argv(["celery", "wroker"]) and _check_argv(["scheduler", "--no-such-flag"])
    assert _check_argv(["python", "-m", "include.pipeline.no_such_module"])
    assert _check_argv(["celery", "worker", "--queues", "training"]) is None


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if "healthcheck" in s])
def test_healthchecks_name_real_commands(name):
    test = SERVICES[name]["healthcheck"]["test"]
    line = test[1] if test[0] == "CMD-SHELL" else " ".join(test[1:])
    words = shlex.split(line.replace("$${HOSTNAME}", "host").replace("$$", "$"))
    if words[0] == "airflow":
        assert _check_airflow_argv(words[1:]) is None, line
    elif words[0] == "celery":
        module = words[words.index("--app") + 1].rsplit(".", 1)[0]
        assert importlib.util.find_spec(module), line
    if name == "airflow-scheduler":  # its health server is only there when enabled
        assert SERVICES[name]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"] == "true"


def test_every_airflow_config_variable_is_a_real_option():
    from airflow.configuration import conf

    conf.load_providers_configuration()
    known = {s: set(v.get("options", {})) for s, v in conf.configuration_description.items()}
    bad = []
    for name in AIRFLOW_SERVICES:
        for key in SERVICES[name]["environment"]:
            m = re.fullmatch(r"AIRFLOW__([A-Z_]+?)__([A-Z_]+)", key)
            if not m:
                continue
            section, option = m.group(1).lower(), m.group(2).lower()
            if section not in CUSTOM_SECTIONS and option not in known.get(section, set()):
                bad.append(f"{name}: {key}")
    assert not bad, bad


def test_every_routed_queue_has_a_worker():
    served = set()
    for name in AIRFLOW_SERVICES:
        for argv in _command_lines(SERVICES[name]):
            if argv[:2] == ["celery", "worker"]:
                served |= set(argv[argv.index("--queues") + 1].split(","))
    env = COMPOSE["x-airflow-common"]["environment"]
    routed = {env["AIRFLOW__REVIEWS__TRAINING_QUEUE"], env["AIRFLOW__REVIEWS__SERVING_QUEUE"], "default"}
    assert routed <= served, routed - served
    # the queue the DAG routes train to is read from exactly this option
    from include.pipeline import defaults

    assert "training_queue" in Path(defaults.__file__).read_text() and "serving_queue" in Path(defaults.__file__).read_text()


def test_volumes_bind_existing_project_folders_and_named_volumes_are_declared():
    declared = set(COMPOSE.get("volumes") or {})
    used = set()
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes", []):
            source, target = vol.split(":")[:2]
            if source.startswith("."):
                assert (ROOT / source).is_dir(), f"{name}: {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
            assert target.startswith("/"), vol
    assert used == declared, f"declared but unused: {declared - used}"
    mounts = {v.split(":")[1] for v in COMPOSE["x-airflow-common"]["volumes"]}
    env = COMPOSE["x-airflow-common"]["environment"]
    assert {env["AIRFLOW__CORE__DAGS_FOLDER"], env["AIRFLOW__CORE__PLUGINS_FOLDER"]} <= mounts
    assert env["REVIEWS_HOME"] in mounts, "the state dir is a shared volume"
    assert "/opt/airflow/project/include" in mounts and "/opt/airflow/project" in env["PYTHONPATH"].split(":")


def test_ports_are_unique_and_urls_point_at_services():
    host_ports = []
    for name, svc in SERVICES.items():
        for port in svc.get("ports", []):
            host, container = str(port).rsplit(":", 1)
            host_ports.append(host)
            if name == "airflow-apiserver":
                argv = _command_lines(svc)[0]
                assert argv[argv.index("--port") + 1] == container
    assert len(host_ports) == len(set(host_ports)), host_ports
    env = COMPOSE["x-airflow-common"]["environment"]
    m = re.fullmatch(r"http://([\w-]+):(\d+)/execution/", env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert m and m.group(1) == "airflow-apiserver" and m.group(2) == "8080"
    assert "@postgres:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert "@redis:6379/" in env["AIRFLOW__CELERY__BROKER_URL"]
    assert SERVICES["model-endpoint"]["environment"]["ENDPOINT_BIND_HOST"] == "0.0.0.0"
    assert any(str(p).endswith(":" + env["ENDPOINT_PORT"]) for p in SERVICES["model-endpoint"]["ports"])


def test_depends_on_names_services_and_conditions_they_can_meet():
    for name, svc in SERVICES.items():
        for dep, spec in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, f"{name} depends on unknown {dep}"
            cond = spec["condition"]
            if cond == "service_healthy":
                assert "healthcheck" in SERVICES[dep], f"{name} waits for {dep} to be healthy; it has no healthcheck"
            else:
                assert cond == "service_completed_successfully" and dep == "airflow-init", (name, dep, cond)
    for name in AIRFLOW_SERVICES:
        if name != "airflow-init":
            assert SERVICES[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"


def test_no_secret_is_written_in_the_file_and_env_example_lists_every_variable():
    text = "\n".join(line for line in (ROOT / "docker-compose.yaml").read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))  # $${X}: the container's own
    example = dict(line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    assert referenced <= set(example), f"not in .env.example: {referenced - set(example)}"
    for var in referenced:
        if SECRET.search(var) and var != "REVIEWS_ENDPOINT_API_KEY":
            assert re.search(r"\$\{" + var + r":\?", text), f"{var} must be required (${{{var}:?...}}), no default"
            assert example[var] == "", f".env.example must not hold a value for {var}"
    for name, svc in SERVICES.items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET.search(key) and key != "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE":
                assert str(value).startswith("${") or "$$" in str(value), f"{name}: {key} has a literal value"
    assert ".env" in (ROOT / ".gitignore").read_text().split()
