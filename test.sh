#!/usr/bin/env bash
# The test command: sets the machine up (scripts/setup.sh), then runs every test of the
# workspace. Arguments go to `cargo test` (`./test.sh provision`: the tests whose name has it);
# CARGO_TARGET_DIR is kept when set.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec cargo test --workspace "$@"
