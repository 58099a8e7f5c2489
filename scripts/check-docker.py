#!/usr/bin/env python3
"""Validates docker-compose.yml and docker/ without a Docker engine (none runs on our machines).

Checks what can be checked: the compose file parses and has the promised shape; the Dockerfile builds
with the same cargo command as a release build, for binaries the workspace really has, on a Rust
image new enough for the workspace's rust-version; the runtime user is not root.
Usage: scripts/check-docker.py   (needs PyYAML; scripts/test.sh runs it with the emulator's venv)
"""
import json
import pathlib
import re
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
services = compose.get("services", {})
check({"db", "migrate", "api", "worker", "emulator"} <= set(services), "compose has db, migrate, api, worker, emulator")
db = services.get("db", {})
check("pg_isready" in json.dumps(db.get("healthcheck", {})), "db has a pg_isready health check")
check("ports" not in db, "db publishes no port")
check(db.get("networks") == ["internal"], "db is on the internal network only")
check(compose.get("networks", {}).get("internal", {}).get("internal") is True, "the internal network has no route out")
check("pgdata" in compose.get("volumes", {}) and any(v.startswith("pgdata:") for v in db.get("volumes", [])), "db data is a named volume")
check((ROOT / (db.get("build") or "")).joinpath("Dockerfile").exists(), "db builds from docker/postgres")
pg_dockerfile = (ROOT / "docker/postgres/Dockerfile").read_text()
check("pg_uuidv7" in pg_dockerfile and re.search(r"FROM postgres:17[.\d]*-", pg_dockerfile) is not None, "db image is PostgreSQL 17 with pg_uuidv7")
migrate = services.get("migrate", {})
check(migrate.get("depends_on", {}).get("db", {}).get("condition") == "service_healthy", "migrate waits for a healthy db")
check("herald-migrate run" in json.dumps(migrate.get("entrypoint", "")), "migrate runs herald-migrate run")
secret_files = {k: v.get("file", "") for k, v in compose.get("secrets", {}).items()}
for name in ("api", "worker"):
    svc = services.get(name, {})
    cond = svc.get("depends_on", {}).get("migrate", {}).get("condition")
    check(cond == "service_completed_successfully", f"{name} starts after a successful migration")
    env = svc.get("environment", {})
    check(env.get("DATABASE_URL_FILE") == "/run/secrets/database_url" and "database_url" in svc.get("secrets", []),
          f"{name} reads its database URL (the data-only role's) from a compose secret")
    check(not any(re.search(r"PASSWORD|TOKEN|SECRET", k) and not k.endswith("_FILE") and v and "${" not in str(v)
                  for k, v in env.items()), f"{name} has no secret inline in its environment")
api = services.get("api", {})
check(api.get("environment", {}).get("API_TOKEN_FILE") == "/run/secrets/api_token", "the API token is a compose secret")
check(api.get("environment", {}).get("API_TOKENS_FILE") == "/run/secrets/api_tokens" and "API_TOKENS" not in api.get("environment", {}),
      "API_TOKENS is a compose secret too, never a variable")
internal_subnets = [c.get("subnet", "") for c in compose.get("networks", {}).get("internal", {}).get("ipam", {}).get("config", [])]
for name, var, port in (("api", "API_METRICS_ADDR", "9101"), ("worker", "METRICS_ADDR", "9100")):
    svc = services.get(name, {})
    cmd = " ".join(svc.get("command", [])) if isinstance(svc.get("command"), list) else str(svc.get("command", ""))
    prefix = internal_subnets[0].rsplit(".", 1)[0] if internal_subnets else "?"
    check(var not in svc.get("environment", {}) and f"{var}=$${{addr" in cmd and prefix.replace(".", "\\.") in cmd and f":{port}" in cmd,
          f"{name}'s /metrics binds only to its address on the internal network ({internal_subnets})")
check("/secrets/" in (ROOT / ".gitignore").read_text().split(), "secrets/ is in .gitignore")
check(all(str(p).startswith(("${HERALD_API_PUBLISH:-127.0.0.1:", "${HERALD_PUBLIC_PUBLISH:-127.0.0.1:", "127.0.0.1:"))
          for p in api.get("ports", [])),
      "the API (and its public listener) is published on 127.0.0.1 by default")
check(all(f.startswith("./secrets/") for f in secret_files.values()) and
      {"postgres_password", "app_db_password", "owner_database_url", "database_url", "api_token", "unsubscribe_secrets"} <= set(secret_files),
      "secrets are files under ./secrets")
check(db.get("environment", {}).get("POSTGRES_PASSWORD_FILE") == "/run/secrets/postgres_password", "the database password is a secret file")
backup = services.get("backup", {})
check("BACKUP_CRON" in backup.get("environment", {}) and any(v.startswith("backups:") for v in backup.get("volumes", [])),
      "a backup service runs on BACKUP_CRON into a volume")
check((ROOT / "docker/backup/Dockerfile").exists() and "backup-db.sh" in (ROOT / "docker/backup/Dockerfile").read_text(),
      "the backup image runs scripts/backup-db.sh")
ignore = (ROOT / ".dockerignore").read_text().split() if (ROOT / ".dockerignore").exists() else []
check({"target/", ".local/", "backups/", "secrets/", ".env"} <= set(ignore), ".dockerignore keeps target, .local, backups, secrets and .env out")
# Every variable compose reads from the environment is documented.
documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
check(read <= documented, "every variable docker-compose.yml reads is in .env.example" +
      (f" (missing: {', '.join(sorted(read - documented))})" if read - documented else ""))
check(services.get("emulator", {}).get("profiles") == ["local"], "the emulator is under the local profile")

dockerfile = (ROOT / "docker/Dockerfile").read_text()
build = re.search(r"RUN (cargo build [^\n]+)", dockerfile)
check(build is not None and build.group(1) == "cargo build --release --locked --workspace --bins", "the image builds with cargo build --release --locked --workspace --bins")
meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked", "--offline"],
    cwd=ROOT, check=True, capture_output=True, text=True).stdout)
bins = {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}
copied = set(re.findall(r"/src/target/release/([\w-]+)", dockerfile))
check(copied and copied <= bins, f"the image copies real binaries ({', '.join(sorted(copied))})")
rust_image = re.search(r"FROM rust:(\d+)\.(\d+)", dockerfile)
need = re.search(r'rust-version = "(\d+)\.(\d+)"', (ROOT / "Cargo.toml").read_text())
check(rust_image is not None and need is not None and tuple(map(int, rust_image.groups())) >= tuple(map(int, need.groups())),
      "the Rust image is at least the workspace's rust-version")
user = re.findall(r"^USER (\S+)", dockerfile, re.M)
check(bool(user) and user[-1].split(":")[0] not in ("root", "0"), "the runtime image runs as a non-root user")

print(f"{len(failures)} failed")
sys.exit(1 if failures else 0)
