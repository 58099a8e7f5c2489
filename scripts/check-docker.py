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
for name in ("api", "worker"):
    svc = services.get(name, {})
    cond = svc.get("depends_on", {}).get("migrate", {}).get("condition")
    check(cond == "service_completed_successfully", f"{name} starts after a successful migration")
    check("herald_app" in svc.get("environment", {}).get("DATABASE_URL", ""), f"{name} connects as the data-only role")
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
