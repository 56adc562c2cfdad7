#!/usr/bin/env bash
# Debian / Ubuntu packages that expose's tests use beyond pip. Safe to re-run: packages
# already installed are skipped without touching apt. Never fails the caller: without
# root or apt-get it says so and exits 0 (the tests that need a missing package skip with
# the reason), and a package that apt cannot find does not stop the others.
#
#   sudo bash scripts/install-system-deps.sh          # EXPOSE_SKIP_SYSTEM_DEPS=1: do nothing
set -uo pipefail

PACKAGES=(
    # MediaPipe's and OpenCV's wheels load these (libGL, libEGL, libGLESv2, glib)
    libgl1 libegl1 libgles2 libglib2.0-0
    # browser tests (tests/live/test_browser.py): Playwright drives the system chromium
    chromium fonts-dejavu-core
    # RTSP test (tests/live/rtsp_server.py): GStreamer's RTSP server under Debian's python3
    python3 python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp gstreamer1.0-tools
    gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
    # the dev evaluation's attack media (bench/make_attacks.py): muxing and re-encoding, synthetic speech
    ffmpeg espeak-ng
    # SIEM exporter tests (tests/test_syslog.py): a real syslog daemon over UDP, TCP and TLS
    rsyslog rsyslog-gnutls
    # many nodes over Redis Streams (tests/live/test_cluster.py): a real redis-server
    redis-server
)

say() { echo "install-system-deps: $*"; }

if [ "${EXPOSE_SKIP_SYSTEM_DEPS:-0}" = "1" ]; then
    say "EXPOSE_SKIP_SYSTEM_DEPS=1: skipped"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
    say "no apt-get here: skipped (install the equivalents of: ${PACKAGES[*]})"
    exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    say "all ${#PACKAGES[@]} packages present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    say "not root: skipped; missing: ${missing[*]} (run: sudo bash $0)"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt_get() { apt-get -y -q -o Dpkg::Use-Pty=0 "$@"; }

say "installing: ${missing[*]}"
apt_get update >/dev/null || say "apt-get update failed; trying with the current package lists"
# Only what this distribution has (Ubuntu's chromium, for one, is a snap wrapper or absent).
available=()
failed=()
for p in "${missing[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then
        available+=("$p")
    else
        say "not available from apt here: $p"
        failed+=("$p")
    fi
done
if [ ${#available[@]} -gt 0 ] && ! apt_get install --no-install-recommends "${available[@]}" >/dev/null; then
    say "installing them together failed; one at a time"
    for p in "${available[@]}"; do
        apt_get install --no-install-recommends "$p" >/dev/null || failed+=("$p")
    done
fi
if [ ${#failed[@]} -gt 0 ]; then
    say "could not install: ${failed[*]} (the tests that need them will skip)"
else
    say "done"
fi
exit 0
