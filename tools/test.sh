#!/bin/sh
# Runs every test: checks/installs the packages, then `make test` (unit tests,
# integration tests on the release build, real-NAT, browser and fuzz smoke
# tests, then the integration tests under ASan+UBSan and under TSan).
set -eu
cd "$(dirname "$0")/.."
sh tools/deps.sh test
make test
