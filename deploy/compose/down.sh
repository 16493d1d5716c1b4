#!/usr/bin/env bash
# Stop the example mesh started by up.sh. The data volumes stay unless -v is given.
# Usage: deploy/compose/down.sh [-v]
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/up.sh" --down "$@"
