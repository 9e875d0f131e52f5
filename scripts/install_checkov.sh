#!/usr/bin/env bash
# Install checkov into its own virtualenv under .tools/ (not the project's venv: checkov pins
# many libraries the project also uses). Then: .tools/checkov/bin/checkov --version
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.tools/checkov"
VERSION="3.3.30"
if [ -x "$VENV/bin/checkov" ] && "$VENV/bin/checkov" --version 2>/dev/null | grep -qx "$VERSION"; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "checkov==$VERSION"
"$VENV/bin/checkov" --version
