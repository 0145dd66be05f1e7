#!/usr/bin/env bash
# Installs the system packages the gateway needs to build, run and test, when they are missing.
# As root it uses apt-get; otherwise it names what is missing and stops.
#   cmake, clang, libclang-dev: build whisper.cpp (whisper-rs) from source
#   espeak-ng: the bot's default voice (run as a separate program) and test speech
#   sox: audio checks in tests
#   python3: the model provisioning script
#   libopus-dev, pkg-config: the Opus codec (libopus, BSD), linked through audiopus
#   sip-tester: SIPp, the SIP peer the end-to-end tests and the capacity benchmark call with
#   python3-venv: the virtual environment for pjsua2 (PJSIP's Python binding), the other peer
#   dnsmasq-base: dnsmasq, the real DNS server (NAPTR, SRV, A records on loopback) that the
#     RFC 3263 lookup and failover test (tests/sip_dns.rs) resolves agent extensions with
#   baresip: a second SIP user agent for the SRTP tests (tests/sip_srtp.rs: SDES with
#     mediaenc=srtp-mand; BSD, run as a separate test program)
#   postgresql: the shared store of a cluster of gateways ([storage] url); the tests start a
#     throwaway server of their own (initdb + postgres as the `postgres` user; PostgreSQL
#     licence, run as a separate process)
#   kamailio: the registrar and proxy the trunk tests register with and call through (digest
#     auth with users in an htable; GPL, run as a process)
#   kamailio-tls-modules: Kamailio's TLS module, for the trunk registering over TLS
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

have_cmd cmake || need+=(cmake)
have_cmd clang || need+=(clang)
have_pkg libclang-dev || ls /usr/lib/llvm-*/lib/libclang.so* >/dev/null 2>&1 || need+=(libclang-dev)
have_cmd espeak-ng || need+=(espeak-ng)
have_cmd sox || need+=(sox)
have_cmd python3 || need+=(python3)
have_cmd sipp || need+=(sip-tester)
have_cmd dnsmasq || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
have_cmd baresip || need+=(baresip)
have_cmd kamailio || need+=(kamailio)
ls /usr/lib/*/kamailio/modules/tls.so >/dev/null 2>&1 || need+=(kamailio-tls-modules)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
have_pkg libopus-dev || need+=(libopus-dev)
have_cmd pkg-config || need+=(pkg-config)
# The agent screen and the admin console are tested in a real browser (headless); the console
# test drives it through chromedriver (WebDriver).
have_cmd chromium || need+=(chromium)
have_cmd chromedriver || need+=(chromium-driver)
have_cmd pip3 || python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
have_cmd cc || need+=(build-essential)
have_cmd cargo || { echo "deps: cargo (Rust) is not installed; install a Rust toolchain (rustup) first" >&2; exit 1; }

python3 -c "import venv, ensurepip" >/dev/null 2>&1 || need+=(python3-venv)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing system packages: ${need[*]}" >&2
    echo "deps: install them with: sudo apt-get install -y ${need[*]}" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# PJSIP's Python binding (pjsua2), the full SIP user agent the end-to-end tests call with, in a
# virtual environment of its own (a ready wheel from PyPI; GPL-2.0, run as a separate test
# program, never linked into the gateway).
venv="${VOICEBOT_CACHE:-$HOME/.cache/voicebot}/venv"
if ! "$venv/bin/python" -c "import pjsua2" >/dev/null 2>&1; then
  echo "deps: installing pjsua2-python into $venv" >&2
  python3 -m venv "$venv"
  # Binary wheels only (CPython 3.11 and 3.12 on x86-64 Linux; none for 3.13): never a source
  # build of pjproject.
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
    "pjsua2-python==2.15.1.post1" || {
    echo "deps: no pjsua2-python wheel for $(python3 --version 2>&1) here; the SIP peer tests need it" >&2
    exit 1
  }
fi
