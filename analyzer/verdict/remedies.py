"""What to do about each cause: one remedy text per cause in CAUSES, citing the Microsoft KB articles.

Sources (see docs/protocol.md): KB 319572 (Outlook gets new mail only after about a minute:
server cannot register the client, or UDP is blocked), KB 264035 (UDP server -> client ports > 1024; the
FixedUDPPort value), KB 304849 / 305572 / 311506 (NAT: Outlook cannot get the UDP packet, use polling),
MS-OXCRPC / MS-OXCNOTIF product notes (Exchange 2010 RTM/SP1 and 2013+ never accept opnum 4).
"""

from __future__ import annotations

from analyzer.verdict.model import CAUSES

REMEDIES: dict[str, str] = {
    "push_working": "Nothing to fix: the server's UDP notification reached Outlook and it fetched the news at once.",
    "registered_no_mail_seen": (
        "Registration succeeded; no mail arrived while capturing, so delivery of the UDP notification is unproven. "
        "Capture again while sending a test message to this mailbox (a registered client polls about every "
        "pcmsPollsMax until its first notification, MS-OXCNOTIF 3.2.5.4)."
    ),
    "notification_seen_registration_not_captured": (
        "Nothing to fix: the server's UDP notification reached Outlook and it reacted; the registration itself "
        "happened before the capture started."
    ),
    "async_wait": (
        "Nothing to fix: Outlook 2007+ uses EcDoAsyncWaitEx against Exchange 2007+ (no UDP needed). If new mail is "
        "still late, look at the async wait completions, not at UDP."
    ),
    "server_refused": (
        "The server refused the registration (KB 319572). On Exchange 2000/2003: make sure the "
        "HKLM\\SYSTEM\\CurrentControlSet\\Services\\MSExchangeIS\\ParametersSystem \"Winsock Transports\" value "
        "lists the TCP/IP transport and run EnumProt on the server, then restart the Information Store. Exchange "
        "2010 RTM/SP1 and 2013 or later never accept EcRRegisterPushNotification (ecNotSupported 0x80040102): use "
        "Cached Exchange Mode or an Outlook that uses async notifications (Outlook 2007+), or on Exchange 2010 SP1 "
        "RU3/SP2 set EnablePushNotifications=1 under MSExchangeRPC\\ParametersSystem."
    ),
    "registration_fault": (
        "The server answered the registration with a DCE/RPC fault (KB 319572): check the server's Information "
        "Store and RPC configuration (Winsock Transports + EnumProt) and that the server version supports "
        "EcRRegisterPushNotification (not Exchange 2010 RTM/SP1 or 2013+; use Cached Exchange Mode there)."
    ),
    "client_did_not_register": (
        "Outlook never asked for push notifications. Check the profile for PR_DISABLE_WINSOCK (0x66180003, "
        "KB 304849/305572/311506 polling mode) and remove it if UDP can reach the client; old VPN clients and RPC "
        "over HTTP never register (KB 319572) — use Cached Exchange Mode, or accept the one-minute polling."
    ),
    "udp_not_delivered": (
        "The server sends the UDP notification but Outlook never reacts: open UDP from the Exchange server to the "
        "client, ports >= 1024 (KB 264035, KB 319572) on routers, firewalls and the client's personal firewall; or "
        "pin the client port with HKCU\\Software\\Microsoft\\Office\\11.0\\Outlook\\RPC\\FixedUDPPort (KB 264035) "
        "and open just that port."
    ),
    "icmp_unreachable": (
        "A router or firewall rejects the server's UDP notification (ICMP error in the capture): allow UDP from the "
        "Exchange server to the client, ports >= 1024 (KB 264035, KB 319572), or pin the client port with "
        "FixedUDPPort (KB 264035) and allow that port; the ICMP sender is the device to change."
    ),
    "udp_not_received": (
        "Registered and mail arrived, yet no UDP notification reached the client: open UDP from the Exchange server "
        "to the client, ports >= 1024 (KB 264035, KB 319572) on routers, firewalls and the client firewall; or pin "
        "the port with FixedUDPPort (KB 264035)."
    ),
    "udp_lost_in_transit": (
        "The datagram left the server and never reached the client: a device between the two capture points drops "
        "it. Check the path from the server outwards: routers with access lists, firewalls (allow UDP from the "
        "Exchange server to the client, ports >= 1024, KB 264035 / KB 319572; a stateful firewall's UDP timeout "
        "closes the pinhole minutes after the last packet), NAT devices and VPN gateways; or pin the client port "
        "with FixedUDPPort (KB 264035) and allow just that port. The hosts' own firewalls are not the cause here: "
        "each capture shows what its host's network card saw."
    ),
    "callback_unreachable_nat": (
        "The client registered a callback address the server cannot reach (NAT or VPN, KB 304849/305572/311506): "
        "use a fixed UDP port (FixedUDPPort, KB 264035) with a port forward on the NAT device, or another connection "
        "mode (Cached Exchange Mode, RPC over HTTP, VPN without NAT)."
    ),
    "no_emsmdb_session": "No Outlook (EMSMDB) session in this capture: capture on the client or the Exchange server "
                         "while Outlook starts.",
    "capture_too_short": (
        "Capture too short to tell: start the capture before Outlook starts, keep it running for a few minutes and "
        "send a test message to the mailbox meanwhile."
    ),
    "encrypted_no_evidence": (
        "Packet privacy hides the registration's status and callback address, and the behaviour seen decides "
        "nothing: capture on the server side while sending a test message (look for the UDP datagram), or turn "
        "off \"Encrypt data between Outlook and Exchange\" on a test profile."
    ),
    "mid_session_no_evidence": (
        "The capture starts in the middle of the Outlook session, so the registration is not in it: restart Outlook "
        "while capturing and send a test message."
    ),
}

# What each cause means, in one line (for reports, the README and the web pages).
MEANINGS: dict[str, str] = {
    "push_working": "registered, and a UDP notification was followed within 2 s by a call from the client",
    "registered_no_mail_seen": "EcRRegisterPushNotification returned 0; no mail arrived while capturing, so delivery "
                               "is unproven (polling until the first notification is normal)",
    "notification_seen_registration_not_captured": "the registration is before the capture, but datagrams from the "
                                                   "server are each followed by a call from the client",
    "async_wait": "Outlook 2007+ waits with EcDoAsyncWaitEx (AsyncEMSMDB): no UDP needed",
    "server_refused": "EcRRegisterPushNotification returned an error (e.g. 0x80040102 ecNotSupported)",
    "registration_fault": "EcRRegisterPushNotification was answered with a DCE/RPC fault",
    "client_did_not_register": "Outlook logged on and never called EcRRegisterPushNotification",
    "udp_not_delivered": "the server sent UDP notifications and the client never reacted",
    "icmp_unreachable": "an ICMP error rejects the server's UDP notification",
    "udp_not_received": "registered and mail arrived, but no UDP notification reached the client",
    "udp_lost_in_transit": "merged client and server captures: a datagram left the server and never reached the "
                           "client, dropped between the two capture points",
    "callback_unreachable_nat": "the registered callback address is not the address the server sees (NAT/VPN)",
    "no_emsmdb_session": "no Outlook EMSMDB session to judge",
    "capture_too_short": "the capture ends too soon after logon (or before the registration's answer) to tell",
    "encrypted_no_evidence": "packet privacy hides status and callback, and behaviour decides nothing",
    "mid_session_no_evidence": "the capture starts mid-session and shows no datagram, ICMP error or reaction",
}

assert set(REMEDIES) == set(CAUSES), "every cause needs a remedy"
assert set(MEANINGS) == set(CAUSES), "every cause needs a meaning"


def remedy_for(cause: str) -> str:
    return REMEDIES.get(cause, "")
