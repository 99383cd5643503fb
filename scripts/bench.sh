#!/usr/bin/env bash
# Every benchmark, one after another, each printing its figures beside the limits they are
# held to (DESIGN.md, "Performance budget"). Goes on past a benchmark below its limit and
# exits non-zero at the end if any was. Takes about half an hour on the 2-core reference
# machine (the reporting fold's million-member ballot is most of it).
set -uo pipefail
cd "$(dirname "$0")/.."

# wrk, the HTTP load generator mark_votes.py drives.
if ! command -v wrk >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
            || echo "bench: could not install wrk; mark_votes.py will say so" >&2
    else
        echo "bench: wrk is missing and this is not root: run 'apt-get install wrk' as root" >&2
    fi
fi

failed=()
for bench in relay_throughput roster_import open_ballot mark_votes stream_latency \
             select_recipients reporting_fold; do
    echo "== bench/${bench}.py"
    uv run python "bench/${bench}.py" || failed+=("$bench")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "below a limit (or failed): ${failed[*]}" >&2
    exit 1
fi
