# SPDX-License-Identifier: GPL-2.0-or-later
"""Write every scenario's file and the manifest."""

from __future__ import annotations

import json
from pathlib import Path


CAPTURES = Path(__file__).resolve().parent.parent  # the samples live beside the package

from captures.samplelib.scenarios import SCENARIOS
from captures.samplelib.writers import gzip_bytes, write_netmon2, write_pcap, write_pcapng

def build(outdir: Path, times: dict | None = None) -> list[dict]:
    """Write every scenario's file and manifest.json into outdir; returns the manifest. If ``times`` is a dict it
    receives file name -> list of frame timestamps (µs since the epoch) of the frames in the file."""
    outdir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for fname, fn in SCENARIOS.items():
        cap, entry = fn()
        cap.finish()
        for cl in entry["clients"] + entry.get("clients_with_secrets", []):
            cl["evidence_frames"] = sorted({cap.number(k) for k in cl["evidence_frames"]})
        fmt = entry.pop("format", "pcap")
        compressed = fname.endswith(".gz")
        if fmt == "pcapng":
            data = write_pcapng(cap.sorted_frames)
        elif fmt == "netmon2":
            data = write_netmon2(cap.sorted_frames)
        else:
            data = write_pcap(cap.sorted_frames)
        frames = len(cap.sorted_frames)
        events = cap.events
        truncate_at = entry.pop("truncate_frames", None)
        warning = False
        if truncate_at is not None:
            data, frames = truncate(data, cap.sorted_frames, cap.number(truncate_at) - 1)
            events = [e for e in events if e[0] <= frames]
            warning = True
            entry["cut_at_byte"] = len(data)  # file size: the record of frame frames+1 starts but is incomplete
        if times is not None:
            times[fname] = [ts for ts, _ in cap.sorted_frames[:frames]]
        if compressed:
            data = gzip_bytes(data, fname[:-3])
        (outdir / fname).write_bytes(data)
        manifest.append({
            "file": fname,
            "scenario": entry.pop("scenario", cap.name),
            "description": entry.pop("description"),
            "format": fmt,
            "compressed": compressed,
            "vantage": entry.pop("vantage"),
            "frames": frames,
            "warning_expected": warning or entry.pop("warning_expected", False),
            "start": cap.sorted_frames[0][0] / 1e6,
            "end": cap.sorted_frames[frames - 1][0] / 1e6,
            "clients": entry.pop("clients"),
            "events": events,
            **entry,
        })
    (outdir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def truncate(data: bytes, frames, keep: int):
    """Cut a pcap in the middle of the record of frame keep+1: keep whole frames survive."""
    pos = 24
    for i in range(keep):
        pos += 16 + len(frames[i][1])
    cut = pos + 16 + len(frames[keep][1]) // 2
    return data[:cut], keep


def main(argv):
    outdir = Path(argv[1]) if len(argv) > 1 else CAPTURES
    manifest = build(outdir)
    for m in manifest:
        print(f"{m['file']:42s} {m['frames']:5d} frames  {m['scenario']}")
