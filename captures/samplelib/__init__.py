# SPDX-License-Identifier: GPL-2.0-or-later
"""The sample-capture library: everything captures/generate.py and captures/pairs.py are built from.

Every file it writes is deterministic: fixed timestamps, a fixed random seed per scenario, hand-written file headers
(no wall-clock time anywhere), so running the generator twice gives identical bytes (tests/test_captures_manifest.py
checks it). Link, network and transport layers are built with scapy (Ether/Dot1Q/IP/IPv6/TCP/UDP/ICMP); the
DCE/RPC PDUs are packed with the layouts of analyzer/dissect/layouts.py (the ones the dissector parses with) and
the NDR stubs follow docs/protocol.md §1.4-1.10 and §4 and the MS-OXCRPC IDL (scapy has no EMSMDB definitions, and
packing by hand keeps every byte under control, including the deliberately segmented, reordered and retransmitted
opnum 4 request). The opnum 4 stub is checked against the §1.10 vector at import time.

Modules, lowest first:

* ``constants``: interface UUIDs, PTYPEs, status codes, the site's addresses;
* ``ndr``: the NDR20 writer; ``stubs``: the EMSMDB, EPM and NTLMSSP stubs; ``pdu``: DCE/RPC PDUs;
* ``sealed``: real NTLMSSP sealing (the ``sealed_*`` samples);
* ``simulate``: the session simulator (capture, hosts, TCP, DCE/RPC association, Outlook client, other traffic);
* ``scenarios``: one function per sample file, ``SCENARIOS`` maps file names to them;
* ``writers``: pcap, pcapng and NetMon 2.1 writers; ``build``: writes every sample and manifest.json;
* ``pairs``: pairs of captures of one incident (client side and server side) for ``--merge``.

The manifest (manifest.json) says, per file, what any correct analysis must conclude for each Outlook client
(verdict, cause, evidence frames) and lists every DCE/RPC bind / alter_context / request / response PDU as
(frame, kind, opnum), frame = the frame carrying the PDU's last byte (for the reordered case: the frame that fills
the hole), as Wireshark numbers frames. Frame numbers are computed here, never written by hand.

The package namespace re-exports the building blocks (``from captures import samplelib as g; g.co_pdu(...)``).
"""

from captures.samplelib.constants import *  # noqa: F401,F403
from captures.samplelib.ndr import *  # noqa: F401,F403
from captures.samplelib.stubs import *  # noqa: F401,F403
from captures.samplelib.pdu import *  # noqa: F401,F403
from captures.samplelib.simulate import *  # noqa: F401,F403
from captures.samplelib.writers import *  # noqa: F401,F403
from captures.samplelib.build import SCENARIOS, build, truncate  # noqa: F401
