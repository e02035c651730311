# SPDX-License-Identifier: GPL-2.0-or-later
"""The sample captures and their generator (the library is :mod:`captures.samplelib`)."""
