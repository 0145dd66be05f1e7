#!/usr/bin/env bash
# The main job on embedded defaults: installs what is missing, provisions the models, builds the
# gateway once (release), and runs `voicebot serve`: the bot answers SIP calls (UDP and TCP) on
# 0.0.0.0:5060 until Ctrl-C, with the console, agent screen and admin API on
# http://127.0.0.1:8080 (the banner prints the URLs and where the tokens are). Extra arguments go
# to `voicebot serve` (e.g. --sip 127.0.0.1:5070, --http 127.0.0.1:8081, --http "" for none);
# a first argument naming another subcommand runs that instead (e.g.
# `scripts/run.sh simulate samples/support-call.wav`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
python3 models/provision.py
cargo build --release --locked --quiet
case "${1:-}" in
  serve|simulate|check-config|bench-asr|help|--help|-h|--version|-V)
    exec target/release/voicebot "$@" ;;
esac
exec target/release/voicebot -v serve "$@"
