#!/usr/bin/env bash
# Checks the Debian packages the book needs; installs the missing ones when run as root.
# Usage: tools/system_deps.sh [--require]   (--require: exit 1 if something is still missing)
set -u
missing=()
command -v espeak-ng >/dev/null 2>&1 || missing+=(espeak-ng)          # chapter 5 speech, arlib.data
command -v flite >/dev/null 2>&1 || missing+=(flite)                  # more voices for chapter 5
command -v chromium >/dev/null 2>&1 || missing+=(chromium)            # browser test of the built book
[ -d /usr/share/datasets/fashion-mnist ] || missing+=(dataset-fashion-mnist)  # chapter 4 images
[ -d /usr/share/pocketsphinx/test/data ] || missing+=(pocketsphinx-testdata)  # chapter 5 real recordings
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" fonts-dejavu-core >/dev/null \
    && exit 0
  echo "apt-get failed to install: ${missing[*]}" >&2
else
  echo "Missing system packages: ${missing[*]}" >&2
  echo "Install them with:  sudo apt-get install ${missing[*]}" >&2
fi
[ "${1:-}" = "--require" ] && exit 1
echo "(continuing: the book builds without them; the tests need them)" >&2
exit 0
