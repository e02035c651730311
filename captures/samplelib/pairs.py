#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Generate pairs of captures of one incident, one taken at the Outlook client and one at the Exchange server,
with a known clock offset and drift between the two machines, and their manifest (pairs/manifest.json).

    python captures/pairs.py [OUTDIR]            (default: captures/pairs/)

Each scenario is built once, "on the wire", with the building blocks of captures/generate.py, in the server's
time: a frame the server sends leaves at its time stamp, a frame the client sends reaches the server at its time
stamp. The two views are then derived:

* server view: every frame the server sends or receives, at the server clock (= true time);
* client view: a client frame left the client one one-way delay earlier, a server frame arrives one one-way
  delay later (base delay plus random queueing), both read on the client clock
  ``t + offset + drift * (t - t0)``; frames a firewall drops never arrive, a NAT in between rewrites addresses,
  ports and IP IDs; traffic local to the client (DNS, web) is in the client view only.

Either capture can also miss frames of its own (capture loss). Everything is deterministic (fixed seeds, no wall
clock), so regenerating gives identical bytes; the manifest records the truth the tests compare the merge with:
clock offset/drift, which capture is which side, every notification datagram's frame on each side and its fate,
the NAT rewrites and the verdict of the merged analysis.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether

from captures import samplelib as g  # hosts, TCP, DCE/RPC, EMSMDB building blocks, writers


OUT = Path(__file__).resolve().parent.parent / "pairs"
BASE_DELAY_S = 0.003  # one-way, both directions (the clock estimate assumes equal minimum delays)
QUEUE_MEAN_S = 0.001  # exponential queueing on top, capped
QUEUE_MAX_S = 0.005


class Wire:
    """A scenario on the wire (a generate.Capture in server time) plus what each side sees of it."""

    def __init__(self, name, start_offset_s, seed, client_hosts):
        self.cap = g.Capture(name, start_offset_s, seed)
        self.client_hosts = set(client_hosts)
        self.dropped: set[int] = set()  # creation indexes a firewall drops on the way to the client
        self.client_only: set[int] = set()  # traffic local to the client side
        self.lost_client: set[int] = set()  # capture loss of the client capture
        self.lost_server: set[int] = set()
        self.rng = random.Random(seed * 7 + 1)

    def local(self, fn, *args, **kw):
        """Run a generate.py helper whose frames stay on the client's side of the network."""
        first = len(self.cap.frames)
        out = fn(*args, **kw)
        self.client_only.update(range(first, len(self.cap.frames)))
        return out

    def views(self, offset_s, drift_ppm, nat=None, client_window=None, server_window=None):
        """(client frames, server frames) as lists of (µs, bytes, creation index), sorted by time.

        ``nat``: function(Ether packet, from_client) -> packet as the client side sees it.
        ``*_window``: (first, last) true seconds since the scenario start that the capture ran."""
        t0 = self.cap.base_us / 1e6
        client, server = [], []
        for k, (ts, raw) in enumerate(self.cap.frames):
            t = ts / 1e6
            pkt = Ether(raw)
            from_client = pkt[IP].src in self.client_hosts if IP in pkt else True
            delay = BASE_DELAY_S + min(QUEUE_MAX_S, self.rng.expovariate(1 / QUEUE_MEAN_S))
            if k not in self.client_only and k not in self.lost_server and _inside(server_window, t - t0):
                server.append((ts, raw, k))
            if k in self.dropped or k in self.lost_client:
                continue
            t_client = t if k in self.client_only else (t - delay if from_client else t + delay)
            if not _inside(client_window, t_client - t0):
                continue
            seen = t_client + offset_s + drift_ppm * 1e-6 * (t_client - t0)
            data = raw if nat is None or k in self.client_only else bytes(nat(pkt, from_client))
            client.append((int(round(seen * 1e6)), data, k))
        client.sort(key=lambda f: f[0])
        server.sort(key=lambda f: f[0])
        return client, server


def _inside(window, t):
    return window is None or window[0] <= t <= window[1]


def numbers(view) -> dict[int, int]:
    return {k: n + 1 for n, (_ts, _raw, k) in enumerate(view)}


def write(view, fmt) -> bytes:
    frames = [(ts, raw) for ts, raw, _k in view]
    return {"pcap": g.write_pcap, "pcapng": g.write_pcapng, "netmon2": g.write_netmon2}[fmt](frames)


def rewrite(pkt, src=None, dst=None, sport=None, dport=None, ip_id=None):
    pkt = pkt.copy()
    ip = pkt[IP]
    if src:
        ip.src = src
    if dst:
        ip.dst = dst
    if ip_id is not None:
        ip.id = ip_id
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP] if UDP in pkt else None
    if l4 is not None:
        if sport is not None:
            l4.sport = sport
        if dport is not None:
            l4.dport = dport
        del l4.chksum
    del ip.chksum
    return pkt


# ------------------------------------------------------------------------------------------------------------------
# scenarios: each returns (Wire, views, manifest entry with creation indexes still to be numbered)


def session(w: Wire, client: g.Host, server: g.Host, name, cb_port, ctx, datagrams, reaction_delay=0.3,
            poll_until=330.0, sport=1030):
    """Outlook logs on, registers, polls; the server sends one datagram at each time in ``datagrams`` (a dict
    time -> delivered?); the client fetches after each delivered one. Returns per datagram (creation index,
    reaction creation index or None) and the registration's frames."""
    cap = w.cap
    w.local(g.dns_noise, cap, client, 0.0)
    o = g.Outlook(cap, client, server, name)
    t = o.logon(0.1)
    reg = o.register(t + 0.4, client.ip, cb_port, ctx)
    note_times = sorted(datagrams)
    polls = [tp for tp in o.poll_times(61.0, poll_until)]
    out = []
    w.polls = []  # (request, response) creation indexes of the unprompted polls
    items = sorted([(tp, "poll", None) for tp in polls] + [(tn, "udp", datagrams[tn]) for tn in note_times])
    for i, (tt, what, delivered) in enumerate(items):
        if what == "poll":
            w.polls.append(o.poll(tt))
            continue
        k = g.udp_datagram(cap, server, sport, client, cb_port, ctx, tt)
        reaction = None
        if delivered:
            (req, _resp), _ = o.fetch(tt + reaction_delay)
            reaction = req
        else:
            w.dropped.add(k)
        out.append((k, reaction))
    w.local(g.bulk_noise, cap, client, 130.0, segments=8)
    return o, reg, out


def s_firewall_drop():
    """NetMon client capture + pcapng server capture. The first datagram gets through and Outlook fetches; the
    firewall's UDP pinhole then times out and drops the next three. Each capture also lost a frame of its own."""
    w = Wire("pair_firewall_drop", 36000, 301, ["10.1.60.21"])
    c, s = g.Host("10.1.60.21"), g.Host(g.EXCHANGE)
    ctx = bytes.fromhex("f1e2d3c4b5a69788")
    o, reg, notes = session(w, c, s, "mallory", 2745, ctx, {92.0: True, 152.5: False, 213.0: False, 273.5: False})
    w.lost_client.add(w.polls[1][0])  # a poll the client capture missed (the server capture has it)
    w.lost_server.add(w.polls[2][1])  # an answer the server capture missed
    views = w.views(offset_s=-12.345678, drift_ppm=35.0)
    return w, views, dict(
        client_format="netmon2", server_format="pcapng", offset_s=-12.345678, drift_ppm=35.0,
        description="client capture (NetMon 2.1) and server capture (pcapng) of one Outlook session; the client "
        "clock runs 12.35 s behind and 35 ppm fast; four datagrams leave the server, only the first reaches the "
        "client (it fetches), a firewall drops the other three; each capture lost one frame of its own",
        notes=notes, reg=reg, client=c.ip, client_seen_as=c.ip, server=s.ip,
        merged_clients=[{"client": c.ip, "verdict": "udp_blocked", "cause": "udp_lost_in_transit"}],
        rewrites=[])


NAT_VIP = "192.0.2.10"  # the Exchange server's public address; a static NAT forwards it to 10.0.0.10


def s_nat_rewrite():
    """The Exchange server sits behind a static NAT: the client talks to 192.0.2.10, the server capture shows
    10.0.0.10; the NAT also rewrites the datagrams' source port and every IP ID. All datagrams arrive."""
    w = Wire("pair_nat_rewrite", 39600, 302, ["10.1.61.35"])
    c, s = g.Host("10.1.61.35"), g.Host(g.EXCHANGE)
    ctx = bytes.fromhex("0a1b2c3d4e5f6071")
    o, reg, notes = session(w, c, s, "nina", 3120, ctx, {95.0: True, 185.0: True, 275.0: True}, sport=1044)
    rng = random.Random(77)

    def nat(pkt, from_client):
        ip_id = rng.randrange(65536)
        if from_client:
            return rewrite(pkt, dst=NAT_VIP, ip_id=ip_id)
        sport = 61044 if UDP in pkt and pkt[UDP].sport == 1044 else None
        return rewrite(pkt, src=NAT_VIP, sport=sport, ip_id=ip_id)
    views = w.views(offset_s=2.718281, drift_ppm=-20.0, nat=nat)
    return w, views, dict(
        client_format="pcap", server_format="pcap", offset_s=2.718281, drift_ppm=-20.0,
        description="the Exchange server is behind a static NAT (192.0.2.10 outside, 10.0.0.10 inside) that also "
        "rewrites the datagrams' source port 1044 -> 61044 and every IP ID; the client clock is 2.72 s ahead, "
        "20 ppm slow; three datagrams, all delivered and each followed by a fetch",
        notes=notes, reg=reg, client=c.ip, client_seen_as=c.ip, server=s.ip,
        merged_clients=[{"client": c.ip, "verdict": "registered", "cause": "push_working"}],
        rewrites=[{"proto": "tcp", "server_side_ip": s.ip, "client_side_ip": NAT_VIP},
                  {"proto": "udp", "server_side": f"{s.ip}:1044", "client_side": f"{NAT_VIP}:61044"}])


def s_partial_overlap():
    """The client capture was started late (true second 150) and stopped early (300): the first datagram left
    the server before the client capture ran, so nothing can be said about it; the next arrives, the third is
    dropped while both captures run, the fourth leaves after the client capture ended."""
    w = Wire("pair_partial_overlap", 43200, 303, ["10.1.62.47"])
    c, s = g.Host("10.1.62.47"), g.Host(g.EXCHANGE)
    ctx = bytes.fromhex("5566778899aabbcc")
    o, reg, notes = session(w, c, s, "oscar", 2999, ctx, {100.0: False, 190.0: True, 250.0: False, 318.0: False},
                            poll_until=330.0)
    g.epm_lookup(w.cap, c, s, 160.0)  # the address book asks the endpoint mapper again: names the EMSMDB port
    for t in range(155, 300, 20):
        w.local(g.dns_noise, w.cap, c, float(t))
    views = w.views(offset_s=3600.25, drift_ppm=-50.0, client_window=(150.0, 300.0))
    return w, views, dict(
        client_format="pcap", server_format="pcapng", offset_s=3600.25, drift_ppm=-50.0,
        description="server capture of the whole session; the client capture runs only from second 150 to 300 "
        "and its clock is an hour and 0.25 s ahead (a local time zone), 50 ppm slow; datagrams at 100 s (before "
        "the client capture), 190 s (arrives, fetch), 250 s (dropped) and 318 s (after it)",
        notes=notes, reg=reg, client=c.ip, client_seen_as=c.ip, server=s.ip,
        merged_clients=[{"client": c.ip, "verdict": "udp_blocked", "cause": "udp_lost_in_transit"}], rewrites=[])


def s_unrelated():
    """A client capture and a server capture at the same time, of the same Exchange server, but of two different
    clients: they share no packet and must not be merged."""
    w1 = Wire("pair_unrelated_client", 46800, 304, ["10.1.63.10"])
    c1, s = g.Host("10.1.63.10"), g.Host(g.EXCHANGE)
    session(w1, c1, s, "paul", 2401, bytes.fromhex("0102030405060708"), {120.0: True})
    w2 = Wire("pair_unrelated_server", 46800, 305, ["10.1.63.11"])
    c2 = g.Host("10.1.63.11")
    session(w2, c2, s, "quinn", 2402, bytes.fromhex("1112131415161718"), {130.0: False})
    client_view, _ = w1.views(offset_s=0.5, drift_ppm=0.0)
    _, server_view = w2.views(offset_s=0.0, drift_ppm=0.0)
    return None, (client_view, server_view), dict(
        client_format="pcap", server_format="pcap", offset_s=None, drift_ppm=None,
        description="a client capture of 10.1.63.10 and a server capture of another client, 10.1.63.11, of the "
        "same server at the same time: no packet in common, so no merge", notes=[], reg=None, client=None,
        server=s.ip, merged_clients=[], rewrites=[], status="no_shared_packets")


SCENARIOS = {
    "firewall_drop": s_firewall_drop,
    "nat_rewrite": s_nat_rewrite,
    "partial_overlap": s_partial_overlap,
    "unrelated": s_unrelated,
}
EXT = {"pcap": "pcap", "pcapng": "pcapng", "netmon2": "cap"}
DELIVERED, LOST, NOT_COVERED = "delivered", "lost_in_transit", "not_covered"


def build(outdir: Path = OUT) -> list[dict]:
    outdir.mkdir(parents=True, exist_ok=True)
    manifest = []
    for name, fn in SCENARIOS.items():
        w, (client_view, server_view), e = fn()
        cfile = f"{name}.client.{EXT[e['client_format']]}"
        sfile = f"{name}.server.{EXT[e['server_format']]}"
        (outdir / cfile).write_bytes(write(client_view, e["client_format"]))
        (outdir / sfile).write_bytes(write(server_view, e["server_format"]))
        cnum, snum = numbers(client_view), numbers(server_view)
        datagrams = []
        for k, reaction in e["notes"]:
            sf, cf = snum.get(k), cnum.get(k)
            fate = DELIVERED if cf is not None else LOST if k in w.dropped and _covered(client_view, w, k) \
                else NOT_COVERED
            datagrams.append({"server_frame": sf, "client_frame": cf, "fate": fate,
                              "reaction_frame": cnum.get(reaction) if reaction is not None else None})
        manifest.append({
            "scenario": name, "description": e["description"], "client_file": cfile, "server_file": sfile,
            "client_format": e["client_format"], "server_format": e["server_format"],
            "status": e.get("status", "merged"),
            "clock": None if e["offset_s"] is None else {
                "offset_s": e["offset_s"], "drift_ppm": e["drift_ppm"], "t0": w.cap.base_us / 1e6,
                "meaning": "client clock - server clock = offset_s + drift_ppm * 1e-6 * (server time - t0)"},
            "client_frames": len(client_view), "server_frames": len(server_view),
            "server_register_frames": sorted(snum[k] for k in e["reg"]) if e["reg"] else [],
            "datagrams": datagrams, "rewrites": e["rewrites"], "merged_clients": e["merged_clients"],
        })
    (outdir / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _covered(client_view, w, k) -> bool:
    """The client capture ran when datagram k would have arrived (its frames' true times, 1 s of slack)."""
    t = w.cap.frames[k][0] + BASE_DELAY_S * 1e6
    first, last = w.cap.frames[client_view[0][2]][0], w.cap.frames[client_view[-1][2]][0]
    return first <= t and t + 1_000_000 <= last


def main(argv):
    outdir = Path(argv[1]) if len(argv) > 1 else OUT
    for m in build(outdir):
        print(f"{m['scenario']:16s} {m['client_file']:32s} {m['client_frames']:4d} frames  "
              f"{m['server_file']:32s} {m['server_frames']:4d} frames")


if __name__ == "__main__":
    main(sys.argv)
