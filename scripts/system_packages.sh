#!/usr/bin/env bash
# Debian packages that make classlm faster or its tests complete, installed when missing and this shell may:
#   scripts/system_packages.sh PACKAGE...
# As root with apt-get (CI, a container) they are installed; elsewhere a one-line note says what to install, and
# the caller goes on: each one is optional (libtcmalloc-minimal4: faster, leaner CPU training, see
# src/classlm/allocator.py; g++: compiled training kernels, see src/classlm/kernels.py; chromium + chromium-driver:
# the browser tests, which skip without them).
set -euo pipefail
missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]} (apt-get)"
    # The package lists of a fresh machine may be empty or stale: update once, quietly.
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}"; } >/dev/null || echo "could not install ${missing[*]}: going on without"
else
    echo "optional: ${missing[*]} not installed (as root: apt-get install ${missing[*]})"
fi
