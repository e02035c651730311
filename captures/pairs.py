#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Regenerate the pairs of captures in pairs/ and pairs/manifest.json.

    python captures/pairs.py [OUTDIR]            (default: captures/pairs/)

The scenarios are in captures/samplelib/pairs.py; this file only runs them.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from captures.samplelib.pairs import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv)
