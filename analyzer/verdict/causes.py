# SPDX-License-Identifier: GPL-2.0-or-later
"""The verdicts and their causes: one table, the single source of every text about a cause.

Each :class:`Cause` has its name (the ``cause`` of a :class:`~analyzer.verdict.model.ClientVerdict` and of the JSON
document), the verdict it belongs to, what it means in one line, and the remedy the reports print. The text, HTML
and web reports, the JSON and the documentation's causes table all take their words from :data:`CAUSE_TABLE`;
``CAUSES``, ``MEANINGS`` and ``REMEDIES`` are dictionary views of it for the code that looks a cause up by name.
Which cause a client gets is decided by the ordered rules in :mod:`analyzer.verdict.judge` (and, for two merged
captures, :mod:`analyzer.verdict.transit`).

The documentation's copy is generated, never typed in (:mod:`analyzer.verdict.docs`)::

    python -m analyzer.verdict.docs --markdown     # the causes table and the remedies list
    python -m analyzer.verdict.docs --rules        # the verdict rules in order of precedence

and ``tests/test_causes.py`` checks the causes table in README.md or docs/*.md against this one word for word.

Sources of the remedies (see docs/protocol.md): KB 319572 (Outlook gets new mail only after about a minute:
server cannot register the client, or UDP is blocked), KB 264035 (UDP server -> client ports > 1024; the
FixedUDPPort value), KB 304849 / 305572 / 311506 (NAT: Outlook cannot get the UDP packet, use polling),
MS-OXCRPC / MS-OXCNOTIF product notes (Exchange 2010 RTM/SP1 and 2013+ never accept opnum 4).
"""

from __future__ import annotations

from dataclasses import dataclass

VERDICTS = ("registered", "not_registered", "udp_blocked", "inconclusive")


@dataclass(frozen=True)
class Cause:
    name: str
    verdict: str  # one of VERDICTS
    meaning: str  # one line, lower case: what the capture showed (reports, web pages, the docs' causes table)
    remedy: str  # what to do about it, citing the KB article or specification section


# In the order of the documentation's table: by verdict, and within a verdict from the most to the least common.
CAUSE_TABLE: tuple[Cause, ...] = (
    Cause(
        "push_working", "registered",
        "registered, and a UDP notification was followed within 2 s by a call from the client",
        "Nothing to fix: the server's UDP notification reached Outlook and it fetched the news at once.",
    ),
    Cause(
        "registered_no_mail_seen", "registered",
        "EcRRegisterPushNotification returned 0; no mail arrived while capturing, so delivery is unproven (polling "
        "until the first notification is normal)",
        "Registration succeeded; no mail arrived while capturing, so delivery of the UDP notification is unproven. "
        "Capture again while sending a test message to this mailbox (a registered client polls about every "
        "pcmsPollsMax until its first notification, MS-OXCNOTIF 3.2.5.4).",
    ),
    Cause(
        "notification_seen_registration_not_captured", "registered",
        "the registration is before the capture, but datagrams from the server are each followed by a call from the "
        "client",
        "Nothing to fix: the server's UDP notification reached Outlook and it reacted; the registration itself "
        "happened before the capture started.",
    ),
    Cause(
        "async_wait", "registered",
        "Outlook 2007+ waits with EcDoAsyncWaitEx (AsyncEMSMDB): no UDP needed",
        "Nothing to fix: Outlook 2007+ uses EcDoAsyncWaitEx against Exchange 2007+ (no UDP needed). If new mail is "
        "still late, look at the async wait completions, not at UDP.",
    ),
    Cause(
        "server_refused", "not_registered",
        "EcRRegisterPushNotification returned an error (e.g. 0x80040102 ecNotSupported)",
        "The server refused the registration (KB 319572). On Exchange 2000/2003: make sure the "
        "HKLM\\SYSTEM\\CurrentControlSet\\Services\\MSExchangeIS\\ParametersSystem \"Winsock Transports\" value "
        "lists the TCP/IP transport and run EnumProt on the server, then restart the Information Store. Exchange "
        "2010 RTM/SP1 and 2013 or later never accept EcRRegisterPushNotification (ecNotSupported 0x80040102): use "
        "Cached Exchange Mode or an Outlook that uses async notifications (Outlook 2007+), or on Exchange 2010 SP1 "
        "RU3/SP2 set EnablePushNotifications=1 under MSExchangeRPC\\ParametersSystem.",
    ),
    Cause(
        "registration_fault", "not_registered",
        "EcRRegisterPushNotification was answered with a DCE/RPC fault",
        "The server answered the registration with a DCE/RPC fault (KB 319572): check the server's Information "
        "Store and RPC configuration (Winsock Transports + EnumProt) and that the server version supports "
        "EcRRegisterPushNotification (not Exchange 2010 RTM/SP1 or 2013+; use Cached Exchange Mode there).",
    ),
    Cause(
        "client_did_not_register", "not_registered",
        "Outlook logged on and never called EcRRegisterPushNotification",
        "Outlook never asked for push notifications. Check the profile for PR_DISABLE_WINSOCK (0x66180003, "
        "KB 304849/305572/311506 polling mode) and remove it if UDP can reach the client; old VPN clients and RPC "
        "over HTTP never register (KB 319572) — use Cached Exchange Mode, or accept the one-minute polling.",
    ),
    Cause(
        "udp_not_delivered", "udp_blocked",
        "the server sent UDP notifications and the client never reacted",
        "The server sends the UDP notification but Outlook never reacts: open UDP from the Exchange server to the "
        "client, ports >= 1024 (KB 264035, KB 319572) on routers, firewalls and the client's personal firewall; or "
        "pin the client port with HKCU\\Software\\Microsoft\\Office\\11.0\\Outlook\\RPC\\FixedUDPPort (KB 264035) "
        "and open just that port.",
    ),
    Cause(
        "icmp_unreachable", "udp_blocked",
        "an ICMP error rejects the server's UDP notification",
        "A router or firewall rejects the server's UDP notification (ICMP error in the capture): allow UDP from the "
        "Exchange server to the client, ports >= 1024 (KB 264035, KB 319572), or pin the client port with "
        "FixedUDPPort (KB 264035) and allow that port; the ICMP sender is the device to change.",
    ),
    Cause(
        "udp_not_received", "udp_blocked",
        "registered and mail arrived, but no UDP notification reached the client",
        "Registered and mail arrived, yet no UDP notification reached the client: open UDP from the Exchange server "
        "to the client, ports >= 1024 (KB 264035, KB 319572) on routers, firewalls and the client firewall; or pin "
        "the port with FixedUDPPort (KB 264035).",
    ),
    Cause(  # only from two merged captures (analyzer.verdict.transit)
        "udp_lost_in_transit", "udp_blocked",
        "merged client and server captures: a datagram left the server and never reached the client, dropped "
        "between the two capture points",
        "The datagram left the server and never reached the client: a device between the two capture points drops "
        "it. Check the path from the server outwards: routers with access lists, firewalls (allow UDP from the "
        "Exchange server to the client, ports >= 1024, KB 264035 / KB 319572; a stateful firewall's UDP timeout "
        "closes the pinhole minutes after the last packet), NAT devices and VPN gateways; or pin the client port "
        "with FixedUDPPort (KB 264035) and allow just that port. The hosts' own firewalls are not the cause here: "
        "each capture shows what its host's network card saw.",
    ),
    Cause(
        "callback_unreachable_nat", "udp_blocked",
        "the registered callback address is not the address the server sees (NAT/VPN)",
        "The client registered a callback address the server cannot reach (NAT or VPN, KB 304849/305572/311506): "
        "use a fixed UDP port (FixedUDPPort, KB 264035) with a port forward on the NAT device, or another connection "
        "mode (Cached Exchange Mode, RPC over HTTP, VPN without NAT).",
    ),
    Cause(
        "no_emsmdb_session", "inconclusive",
        "no Outlook EMSMDB session to judge",
        "No Outlook (EMSMDB) session in this capture: capture on the client or the Exchange server while Outlook "
        "starts.",
    ),
    Cause(
        "capture_too_short", "inconclusive",
        "the capture ends too soon after logon (or before the registration's answer) to tell",
        "Capture too short to tell: start the capture before Outlook starts, keep it running for a few minutes and "
        "send a test message to the mailbox meanwhile.",
    ),
    Cause(
        "encrypted_no_evidence", "inconclusive",
        "packet privacy hides status and callback, and behaviour decides nothing",
        "Packet privacy hides the registration's status and callback address, and the behaviour seen decides "
        "nothing: capture on the server side while sending a test message (look for the UDP datagram), or turn "
        "off \"Encrypt data between Outlook and Exchange\" on a test profile.",
    ),
    Cause(
        "mid_session_no_evidence", "inconclusive",
        "the capture starts mid-session and shows no datagram, ICMP error or reaction",
        "The capture starts in the middle of the Outlook session, so the registration is not in it: restart Outlook "
        "while capturing and send a test message.",
    ),
)

BY_NAME: dict[str, Cause] = {c.name: c for c in CAUSE_TABLE}

# Views for the code that looks a cause up by name (same order as the table).
CAUSES: dict[str, str] = {c.name: c.verdict for c in CAUSE_TABLE}  # cause -> its verdict
MEANINGS: dict[str, str] = {c.name: c.meaning for c in CAUSE_TABLE}
REMEDIES: dict[str, str] = {c.name: c.remedy for c in CAUSE_TABLE}

assert len(BY_NAME) == len(CAUSE_TABLE), "a cause is in the table twice"
assert all(c.verdict in VERDICTS and c.meaning and c.remedy for c in CAUSE_TABLE), "every cause needs a verdict, " \
    "a meaning and a remedy"


def remedy_for(cause: str) -> str:
    return REMEDIES.get(cause, "")
