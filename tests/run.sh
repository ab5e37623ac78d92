#!/usr/bin/env bash
# The test suite on real SoftHSM tokens: installs what it needs, then runs pytest.
#   bash tests/run.sh [pytest arguments]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HSMCA_WITH_JAVA=1 bash "$repo/softhsm/bootstrap.sh"
cd "$repo"
exec "$repo/.venv/bin/python" -m pytest "$@"
