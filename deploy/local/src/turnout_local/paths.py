"""Where the local runtime keeps its files: `.local/` at the repository root (git-ignored)."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


@cache
def repo_root() -> Path:
    # deploy/local/src/turnout_local/paths.py -> the repository root, as installed editable
    # by the uv workspace. TURNOUT_REPO_ROOT lets a non-editable install point at a checkout.
    if env := os.environ.get("TURNOUT_REPO_ROOT"):
        return Path(env).resolve()
    return Path(__file__).resolve().parents[4]


def local_dir() -> Path:
    path = Path(os.environ.get("TURNOUT_LOCAL_DIR", repo_root() / ".local")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def kafka_pom() -> Path:
    return repo_root() / "deploy" / "local" / "kafka" / "pom.xml"


def broker_properties() -> Path:
    return repo_root() / "deploy" / "kafka" / "broker.properties"


def kafka_log4j2() -> Path:
    return repo_root() / "deploy" / "local" / "log4j2.properties"
