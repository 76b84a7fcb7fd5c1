#!/usr/bin/env bash
# The dashboard's browser tests (tests/e2e/test_dashboard.py) drive Debian's Chromium through its chromedriver:
# install both once (apt; a no-op when present), with a font for the page's text. Selenium is in the dev extra.
set -euo pipefail

PACKAGES=(chromium chromium-driver fonts-liberation)

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "install.sh: $(chromium --version 2>/dev/null | head -1) and its chromedriver are installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install.sh: no apt-get here: install Chromium and its chromedriver yourself (the browser tests skip)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
echo "install.sh: installing ${PACKAGES[*]}"
$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
  "${PACKAGES[@]}"
