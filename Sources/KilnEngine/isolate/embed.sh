#!/bin/sh
# Regenerates IsolateHostScript.swift from host.mjs (run by `make embed`; a test checks
# that the two agree).
set -eu
dir=$(dirname "$0")
out="$dir/../IsolateHostScript.swift"
if grep -q '"""##' "$dir/host.mjs"; then echo "host.mjs contains the raw-string delimiter" >&2; exit 1; fi
{
  echo '// Generated from isolate/host.mjs by isolate/embed.sh (`make embed`). Do not edit.'
  echo ''
  echo '/// The Node isolate host, written to a temporary file when the host starts.'
  echo 'enum IsolateHostScript {'
  echo '    static let source = ##"""'
  cat "$dir/host.mjs"
  echo '"""##'
  echo '}'
} > "$out"
