#!/usr/bin/env bash
# Lints .github/workflows/ with actionlint (a Go module), installing it with `go install` when
# it is not on PATH. Fails loudly when neither actionlint nor go is available.
set -euo pipefail
cd "$(dirname "$0")/.."
ACTIONLINT_VERSION=v1.7.12
bin=$(command -v actionlint || true)
if [ -z "$bin" ]; then
  gobin=$(go env GOPATH 2>/dev/null)/bin
  if [ ! -x "$gobin/actionlint" ]; then
    command -v go >/dev/null || { echo "lint-workflows: needs actionlint or go (to install it)"; exit 1; }
    go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  fi
  bin=$gobin/actionlint
fi
"$bin" -no-color .github/workflows/*.yml
echo "lint-workflows: $(ls .github/workflows/*.yml | wc -l) workflow files clean ($("$bin" -version | head -1))"
