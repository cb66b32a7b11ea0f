"""docs/security.md, checked on the live stack: what listens where, who may call what, what
the Execution API and the log server trust, and where the secrets do not end up.

Each test is one claim of the review; the document names the test. Routes are enumerated
from what the running api-server and the installed Airflow declare (the OpenAPI specs, the
UI's and the Execution API's route tables), so a route added by an upgrade is checked too.
The Models page's own routes are checked by tests/e2e/test_models_page_routes.py.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import time
import uuid
from pathlib import Path

import jwt
import psutil
import pytest
import requests
import yaml

from deploy import envfile
from include.retrain import registry
from include.retrain.errors import IntegrityError
from tests.e2e.conftest import RunAll, Stack

pytestmark = pytest.mark.e2e

# Airflow 3.3.2's audiences: UI/REST tokens ([api_auth] jwt_audience unset), task identity
# tokens ([execution_api] jwt_audience), and the log server's (utils/serve_logs/log_server.py).
REST_AUDIENCE = "apache-airflow"
TASK_AUDIENCE = "urn:airflow.apache.org:task"
WRONG_KEY = "not-the-deployment's-key-" * 3

# What the api-server answers without a login (docs/security.md lists them and why).
PUBLIC_OPERATIONS = {
    ("GET", "/api/v2/monitor/health"): "component health, for probes and make status",
    ("GET", "/api/v2/version"): "Airflow's version",
    ("GET", "/api/v2/auth/login"): "a redirect to the login page",
    ("GET", "/api/v2/auth/logout"): "a redirect to the logout page",
    ("GET", "/auth/logout"): "ends the session of whoever calls it",
    ("POST", "/auth/token"): "the login itself: a token for a user name and password",
    ("POST", "/auth/token/cli"): "the same, for the airflow CLI's remote mode",
}
EXECUTION_PUBLIC = {("GET", "/health"), ("GET", "/health/ping")}


def base_url(stack: Stack) -> str:
    return f"http://{stack.env['RETRAIN_API_HOST']}:{stack.env['RETRAIN_API_PORT']}"


def require_runs(run_all: RunAll) -> None:
    """The claims below are about what the pipelines' runs left behind: they must have run."""
    assert run_all.done.returncode == 0, f"run-all failed: {run_all.done.stdout[-1500:]}{run_all.done.stderr[-1500:]}"


def token(key: str, audience: str, subject: str | None = None, **claims: object) -> str:
    now = int(time.time())
    payload = {"sub": subject or str(uuid.uuid4()), "aud": audience, "iat": now, "nbf": now, "exp": now + 300}
    return jwt.encode({**payload, **claims}, key, algorithm="HS512")


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def call(method: str, url: str, headers: dict[str, str] | None = None) -> int:
    body = {} if method in ("POST", "PUT", "PATCH") else None
    response = requests.request(method, url, json=body, headers=headers, allow_redirects=False, timeout=60)
    return response.status_code


# -- what listens where ----------------------------------------------------------------------


def listening(stack: Stack) -> list[tuple[str, str, str, int]]:
    """(owner, process name, address, port) of every listening socket of the stack's processes:
    the ones under run/*.pid and all their descendants (the scheduler's log and health servers)."""
    owners = {}
    for pid_file in (stack.state / "run").glob("*.pid"):
        try:
            process = psutil.Process(int(pid_file.read_text()))
            family = [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        owners |= {p.pid: (pid_file.stem, p) for p in family}
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in owners:
            owner, process = owners[conn.pid]
            found.append((owner, process.name(), conn.laddr.ip, conn.laddr.port))
    return found


def beyond_loopback(sockets: list[tuple[str, str, str, int]]) -> list[tuple[str, str, str, int]]:
    return [s for s in sockets if not ipaddress.ip_address(s[2].removeprefix("::ffff:")).is_loopback]


def test_every_listener_is_on_loopback(stack: Stack) -> None:
    """api-server (UI, REST, Execution API), scheduler health server and the S3 endpoint listen
    on loopback only, and nothing else of the stack listens anywhere."""
    sockets = listening(stack)
    where = {(owner, port): ip for owner, _, ip, port in sockets}
    assert where.get(("api-server", int(stack.env["RETRAIN_API_PORT"]))) == "127.0.0.1", sockets
    assert where.get(("scheduler", int(stack.env["RETRAIN_SCHEDULER_HEALTH_PORT"]))) == "127.0.0.1", sockets
    assert where.get(("s3", int(stack.env["RETRAIN_S3_PORT"]))) == "127.0.0.1", sockets
    assert beyond_loopback(sockets) == []


def test_no_log_server_listens(stack: Stack) -> None:
    """Airflow's log server binds every interface (no address setting in 3.3): the units start
    the scheduler with --skip-serve-logs, and the api-server reads task logs from local files."""
    ports = {int(stack.env["RETRAIN_LOG_SERVER_PORT"]), int(stack.env["RETRAIN_TRIGGERER_LOG_PORT"])}
    assert [s for s in listening(stack) if s[3] in ports or s[1] == "airflow serve-logs"] == []


# -- who may call what -----------------------------------------------------------------------


def _operations(spec: dict, prefix: str = "") -> list[tuple[str, str, dict]]:
    methods = ("get", "post", "put", "patch", "delete", "head")
    return [
        (m.upper(), prefix + path, op) for path, item in spec["paths"].items() for m, op in item.items() if m in methods
    ]


def _filled(path: str, operation: dict) -> str:
    """The path with dummy values of the right type: a 401 must not hide behind a 422."""
    types = {p["name"]: (p.get("schema") or {}).get("type") for p in operation.get("parameters", [])}
    return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", lambda m: "1" if types.get(m.group(1)) == "integer" else "x", path)


def api_operations(stack: Stack) -> list[tuple[str, str, dict]]:
    """Every operation of the public REST API and the auth manager's API, as the running
    api-server publishes them (its OpenAPI documents are public), and of the UI's private API."""
    import airflow.api_fastapi.core_api.openapi as packaged

    base = base_url(stack)
    public = requests.get(f"{base}/openapi.json", timeout=60).json()
    auth = requests.get(f"{base}/auth/openapi.json", timeout=60).json()
    ui = yaml.safe_load((Path(packaged.__file__).parent / "_private_ui.yaml").read_text())
    return [*_operations(public), *_operations(auth, "/auth"), *_operations(ui)]


def test_the_rest_and_ui_apis_refuse_anonymous_and_forged_requests(stack: Stack) -> None:
    """Every /api/v2, /auth and /ui operation answers 401/403 to no login and to a token signed
    with another key, except the documented PUBLIC_OPERATIONS, which really are public."""
    operations = api_operations(stack)
    assert len([op for op in operations if op[1].startswith("/api/v2/")]) > 100, "the whole public API"
    forged = bearer(token(WRONG_KEY, REST_AUDIENCE, subject="1"))
    answered: dict[tuple[str, str], int] = {}
    for method, path, operation in operations:
        url = base_url(stack) + _filled(path, operation)
        for headers in (None, forged):
            status = call(method, url, headers)
            if status not in (401, 403):
                answered[(method, path)] = status
    assert set(answered) == set(PUBLIC_OPERATIONS), answered


def test_the_jwt_secret_is_as_strong_as_the_admin_password(stack: Stack) -> None:
    """A UI/REST token is nothing but a JWT signed with [api_auth] jwt_secret: whoever holds the
    secret is any user. Hence docs/security.md keeps it with the other secrets, never in a log."""
    forged = token(stack.env["AIRFLOW__API_AUTH__JWT_SECRET"], REST_AUDIENCE, subject="1")  # the admin's id
    assert requests.get(f"{base_url(stack)}/api/v2/dags", headers=bearer(forged), timeout=60).status_code == 200
    other = token(WRONG_KEY, REST_AUDIENCE, subject="1")
    assert requests.get(f"{base_url(stack)}/api/v2/dags", headers=bearer(other), timeout=60).status_code in (401, 403)


def execution_routes() -> list[tuple[str, str]]:
    """The Execution API's routes as the installed Airflow declares them."""
    from airflow.api_fastapi.execution_api.routes import execution_api_router
    from fastapi.routing import APIRoute

    return [
        (method, route.path)
        for route in execution_api_router.routes
        if isinstance(route, APIRoute)
        for method in sorted(route.methods)
    ]


def _execution_url(stack: Stack, path: str) -> str:
    def dummy(match: re.Match) -> str:
        name = match.group(1)
        return str(uuid.uuid4()) if name in ("task_instance_id", "connection_test_id") else "x"

    return f"{base_url(stack)}/execution" + re.sub(r"\{([^}:]+)(?::[^}]*)?\}", dummy, path)


def test_the_execution_api_wants_a_task_token_signed_with_the_jwt_secret(stack: Stack) -> None:
    """Every Execution API route but /health refuses no token (401), a token signed with another
    key (403), an unsigned one (alg none) or a UI/REST login token (403, other audience); a task's
    token works only for its own task instance. Any token signed with jwt_secret is a task's: it
    reads every connection."""
    routes = execution_routes()
    assert len(routes) > 40
    foreign = bearer(token(WRONG_KEY, TASK_AUDIENCE))
    for method, path in routes:
        url = _execution_url(stack, path)
        expected = (200, 200) if (method, path) in EXECUTION_PUBLIC else (401, 403)
        assert (call(method, url), call(method, url, foreign)) == expected, (method, path)

    secret = stack.env["AIRFLOW__API_AUTH__JWT_SECRET"]
    variable = f"{base_url(stack)}/execution/variables/no-such-variable"
    rest_login = {"Authorization": stack.api.session.headers["Authorization"]}
    assert requests.get(variable, headers=rest_login, timeout=60).status_code == 403
    assert requests.get(variable, headers=bearer(token(secret, TASK_AUDIENCE)), timeout=60).status_code == 404

    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    heartbeat = f"{base_url(stack)}/execution/task-instances/{other}/heartbeat"
    body = {"hostname": "x", "pid": 1}
    refused = requests.put(heartbeat, json=body, headers=bearer(token(secret, TASK_AUDIENCE, mine)), timeout=60)
    assert refused.status_code == 403 and "does not match" in refused.text
    own = requests.put(heartbeat, json=body, headers=bearer(token(secret, TASK_AUDIENCE, other)), timeout=60)
    assert own.status_code == 404, "its own (unknown) task instance: past the identity check"

    now = int(time.time())
    unsigned = jwt.encode({"sub": mine, "aud": TASK_AUDIENCE, "iat": now, "exp": now + 300}, None, "none")
    assert requests.get(variable, headers=bearer(unsigned), timeout=60).status_code == 403, "alg=none"

    password = json.loads(stack.env["AIRFLOW_CONN_AWS_DEFAULT"])["password"]
    url = f"{base_url(stack)}/execution/connections/aws_default"
    aws = requests.get(url, headers=bearer(token(secret, TASK_AUDIENCE)), timeout=60)
    assert aws.status_code == 200 and aws.json()["password"] == password, "how tasks get credentials: in clear"


def test_the_rest_api_never_shows_a_connection_password(stack: Stack) -> None:
    """Admin and Op manage connections but read their passwords back masked."""
    conn_id = f"security_probe_{uuid.uuid4().hex[:8]}"
    password = uuid.uuid4().hex
    created = stack.api.call(
        "POST",
        "/connections",
        json={"connection_id": conn_id, "conn_type": "aws", "login": "probe", "password": password},
    )
    assert created.status_code == 201, created.text
    try:
        shown = stack.api.call("GET", f"/connections/{conn_id}")
        assert shown.status_code == 200 and shown.json()["password"] == "***"
        assert password not in shown.text and password not in created.text
    finally:
        stack.api.call("DELETE", f"/connections/{conn_id}")


def test_the_login_cookie_is_http_only_and_same_site(stack: Stack) -> None:
    """The UI's login form (FAB, with its own CSRF token) sets ``_token``: HttpOnly, SameSite=Lax.
    Not Secure over plain http: behind a TLS proxy the api-server must see https (docs/security.md)."""
    session = requests.Session()
    form = session.get(f"{base_url(stack)}/auth/login/", timeout=60)
    csrf = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form.text)
    assert csrf, "the login form carries a CSRF token"
    password = (stack.state / "admin-password").read_text().strip()
    fields = {"username": "admin", "password": password}
    without = session.post(f"{base_url(stack)}/auth/login/", data=fields, allow_redirects=False, timeout=60)
    assert without.status_code == 400, "a login post without the form's token is refused"
    done = session.post(
        f"{base_url(stack)}/auth/login/",
        data={**fields, "csrf_token": csrf.group(1)},
        allow_redirects=False,
        timeout=60,
    )
    cookies = [c for c in done.raw.headers.getlist("Set-Cookie") if c.startswith("_token=")]
    assert done.status_code == 302 and cookies, done.text[:500]
    flags = {part.strip().lower() for part in cookies[0].split(";")[1:]}
    assert {"httponly", "samesite=lax"} <= flags and "secure" not in flags, flags


# -- where the secrets do not end up --------------------------------------------------------


def stack_secrets(stack: Stack) -> dict[str, str]:
    """The values that must never leave the environment file and the admin password file."""
    env = envfile.read_env_file(stack.state / "airflow.env")
    values = {key: env[key] for key in envfile.SECRET_KEYS}
    values["admin password"] = (stack.state / "admin-password").read_text().strip()
    values["aws_default password"] = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])["password"]
    assert all(len(v) >= 16 for v in values.values()), "too short to search for without false hits"
    return values


def secrets_in(data: bytes, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value.encode() in data]


def audit_log(stack: Stack) -> list[dict]:
    """Every row of the audit log (/api/v2/eventLogs pages by at most 100)."""
    rows: list[dict] = []
    while True:
        page = stack.api.json("GET", "/eventLogs", params={"limit": 100, "offset": len(rows), "order_by": "id"})
        rows += page["event_logs"]
        if not page["event_logs"] or len(rows) >= page["total_entries"]:
            return rows


def test_local_secret_files_are_private(stack: Stack) -> None:
    for name in ("airflow.env", "admin-password"):
        assert (stack.state / name).stat().st_mode & 0o777 == 0o600, name


def test_no_secret_in_logs_configs_models_or_command_lines(stack: Stack, run_all: RunAll) -> None:
    """After every pipeline ran: no secret in any file of the stack's state (task, process and
    DAG-processor logs, airflow.cfg, units, pid files) but the two that hold them, in any object
    of the model store, in the audit log, or on any of the stack's command lines."""
    require_runs(run_all)
    secrets = stack_secrets(stack)
    keep = {stack.state / "airflow.env", stack.state / "admin-password"}
    files = [p for p in stack.state.rglob("*") if p.is_file() and p not in keep]
    assert any("dag_id=" in str(p) for p in files), "task logs exist"
    found = {str(p.relative_to(stack.state)): hits for p in files if (hits := secrets_in(p.read_bytes(), secrets))}

    s3 = stack.s3()
    for key in stack.keys(""):
        if hits := secrets_in(s3.get_object(Bucket=stack.bucket, Key=key)["Body"].read(), secrets):
            found[f"s3://{stack.bucket}/{key}"] = hits

    events = audit_log(stack)
    assert any(e["event"] == "cli_users_create" for e in events), "the CLI call that set the admin password"
    if hits := secrets_in(json.dumps(events).encode(), secrets):
        found["audit log (/api/v2/eventLogs)"] = hits

    for process in psutil.process_iter(["pid", "cmdline"]):
        if hits := secrets_in(" ".join(process.info["cmdline"] or []).encode(), secrets):
            found[f"command line of pid {process.info['pid']}"] = hits
    assert found == {}


def test_published_versions_are_signed_with_the_deployment_key(stack: Stack, run_all: RunAll) -> None:
    """RETRAIN_SIGNING_KEY reaches the tasks: every manifest the runs published carries an HMAC
    made with the environment file's key, which any other key fails."""
    require_runs(run_all)
    key = envfile.read_env_file(stack.state / "airflow.env")["RETRAIN_SIGNING_KEY"].encode()
    manifests = [k for k in stack.keys("") if k.endswith("/manifest.json")]
    assert manifests
    for name in manifests:
        manifest = json.loads(stack.get(name))
        signature = manifest["artifact"]["signature"]
        assert signature["key_id"] == hashlib.sha256(key).hexdigest()[:12], name
        registry.check_signature(manifest, key, name)
        with pytest.raises(IntegrityError, match="does not match"):
            registry.check_signature(manifest, b"another key", name)
