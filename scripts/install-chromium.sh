#!/usr/bin/env bash
# Puts Debian's Chromium at /usr/bin/chromium for the web page's browser tests
# (tests/server/api/http/test_page.py drives it with Playwright; Playwright's own browser download
# is never used). Does nothing when it is there; elsewhere it says that those tests will skip.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ -f /etc/debian_version ]; then
  echo "Installing Chromium from Debian (chromium) for the browser tests ..."
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; then
    exit 0
  fi
  echo "note: apt-get could not install chromium." >&2
fi
echo "note: /usr/bin/chromium is missing and this is not a root Debian shell, so the web page's" >&2
echo "      browser tests will be skipped (as root on Debian: apt-get install chromium)." >&2
