#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Regenerate every sample capture in this directory and its manifest.json.

    python captures/generate.py [OUTDIR]          (default: the directory of this script; `make captures`)

The generator is the package captures/samplelib (scenarios in samplelib/scenarios.py); this file only runs it.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from captures.samplelib.build import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv)
