#!/usr/bin/env bash
# Run the whole test suite under a virtual X server (napari needs OpenGL).
set -euo pipefail
cd "$(dirname "$0")/.."
exec xvfb-run -a -s "-screen 0 1600x1000x24" python3 -m pytest -q "$@"
