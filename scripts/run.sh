#!/usr/bin/env bash
# The main job on embedded defaults: installs what is missing, provisions the models, builds the
# gateway once (release), and runs the bot on the sample call that ships with the repository.
# Extra arguments go to `voicebot simulate` (e.g. more WAV files, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
python3 models/provision.py
cargo build --release --locked --quiet
if [ $# -eq 0 ]; then
  set -- samples/support-call.wav
fi
exec target/release/voicebot simulate "$@"
