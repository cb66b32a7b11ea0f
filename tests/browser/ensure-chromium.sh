#!/usr/bin/env bash
# The browser tests (tests/e2e/test_models_page_browser.py) drive Debian's headless Chromium
# through its own driver, offline. `make test` runs this first: it does nothing when both are
# installed, else installs Debian's chromium and chromium-driver (sudo -n when not root).
# It prints one line saying what it did; apt-get's output goes to a log shown on failure.
set -euo pipefail

BROWSER=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

if [[ -x $BROWSER && -x $DRIVER ]]; then
    echo "browser tests: $BROWSER and $DRIVER are installed"
    exit 0
fi

fail() {
    echo "browser tests: $1; install them by hand: apt-get install -y chromium chromium-driver" >&2
    exit 1
}

command -v apt-get >/dev/null || fail "$BROWSER or $DRIVER is missing and there is no apt-get here"
sudo=()
if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || fail "$BROWSER or $DRIVER is missing, not root and no sudo"
    sudo=(sudo -n)
fi

log=$(mktemp -t ensure-chromium.XXXXXX.log)
apt() { "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@" >>"$log" 2>&1; }
install=(install -y chromium chromium-driver)
# The package lists are refreshed only when the install fails (stale or never fetched).
if apt "${install[@]}" || { apt update && apt "${install[@]}"; }; then
    [[ -x $BROWSER && -x $DRIVER ]] || fail "apt-get installed chromium but $BROWSER or $DRIVER is still missing (log: $log)"
    echo "browser tests: installed Debian's chromium and chromium-driver ($("$BROWSER" --version 2>/dev/null || true))"
    rm -f "$log"
else
    tail -n 20 "$log" >&2
    fail "apt-get could not install chromium and chromium-driver (log: $log)"
fi
