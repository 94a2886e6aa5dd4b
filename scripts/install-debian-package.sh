#!/usr/bin/env bash
# scripts/install-debian-package.sh PACKAGE FILE WHY: installs Debian's PACKAGE when FILE (one of
# its files) is missing and this is a root Debian shell, as scripts/install-dataset.sh does for
# the data set; elsewhere it says what needs it (WHY) and how to get it, and exits 0 all the same
# (what needs it says so again when it runs).
#   scripts/install-debian-package.sh nghttp2-client /usr/bin/h2load "make bench-serve"
set -euo pipefail
package=$1 file=$2 why=$3
if [ -e "$file" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ -f /etc/debian_version ]; then
  echo "Installing $package from Debian ($why) ..."
  if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package" >/dev/null; then
    exit 0
  fi
  echo "note: apt-get could not install $package." >&2
fi
echo "note: $file is missing and this is not a root Debian shell; $why needs it" >&2
echo "      (as root on Debian: apt-get install $package)." >&2
