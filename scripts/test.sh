#!/usr/bin/env bash
# The project's tests: every Go module in the repository (the library at
# the root, and the modules with heavy optional dependencies below it, each
# with its own go.mod), with the race detector. Arguments are passed to
# every `go test`. Each module's tests run even if an earlier one failed;
# the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
for mod in $(find . -name go.mod -not -path './.git/*' -printf '%h\n' | sort); do
  printf '\n== go test -race %s/...\n' "$mod"
  if ! (cd "$mod" && go test -race -count=1 -timeout 15m ./... "$@"); then
    status=1
    printf '== FAILED: %s\n' "$mod"
  fi
done
exit $status
