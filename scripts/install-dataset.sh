#!/usr/bin/env bash
# Puts Fashion-MNIST where the trainer looks first after an explicit folder: the Debian package's
# /usr/share/datasets/fashion-mnist. Does nothing when the files are there or FASHION_MNIST_DIR is
# set; elsewhere it says what the trainer will do instead (torchvision's download into data/).
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -n "${FASHION_MNIST_DIR:-}" ] || [ -f "$dir/t10k-labels-idx1-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ -f /etc/debian_version ]; then
  echo "Installing Fashion-MNIST from Debian (dataset-fashion-mnist) into $dir ..."
  if apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
    exit 0
  fi
  echo "note: apt-get could not install dataset-fashion-mnist." >&2
fi
echo "note: Fashion-MNIST is not in $dir and this is not a root Debian shell, so the trainer will" >&2
echo "      download it with torchvision into data/ (needs internet), or set FASHION_MNIST_DIR to a" >&2
echo "      folder holding the four *-idx?-ubyte.gz files." >&2
