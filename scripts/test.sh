#!/usr/bin/env bash
# The whole test suite: installs what is missing, provisions the models, checks formatting and
# lints, runs the Rust tests (unit tests beside the code, end-to-end tests under tests/ including
# the scenario files) and the model converter's tests. One release build is shared by all steps.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
python3 models/provision.py
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== converter tests (python unittest)"
python3 -m unittest discover -s models/tests 2>&1 | tee "$log"
py_passed=$(sed -n 's/^Ran \([0-9]*\) tests\?.*/\1/p' "$log" | tail -1)

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --release --locked --all-targets --quiet -- -D warnings
echo "== cargo test"
# The end-to-end tests call the gateway with real SIP peers; here a missing peer is a failure.
export VOICEBOT_REQUIRE_PEERS=1
cargo test --release --locked 2>&1 | tee "$log"
rs_passed=$(awk '/^test result: ok\./ { n += $4 } END { print n + 0 }' "$log")

echo "tests: $((py_passed + rs_passed)) passed, 0 failed"
