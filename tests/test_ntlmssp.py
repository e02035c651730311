"""NTLMSSP decryption (--secrets): the public sealed captures decrypt to the same stub bytes as tshark's, wrong
and missing secrets give a warning naming the account and the connection, Kerberos is named, and the secrets
file parser never echoes a secret."""

import subprocess

import pytest

from analyzer.dissect import dissect_capture, ntlmssp
from analyzer.dissect.collector import EventCollector
from analyzer.dissect.engine import dissect_batches
from analyzer.dissect.secrets import Secrets, SecretsError, load_secrets, nt_hash
from analyzer.ingest import open_capture

from conftest import require_tshark

TSCH = "wiki-tsch-ntlmv2-sealed-password-clem.pcapng"
SVCCTL = "scapy-svcctl-ntlm-sealed-password-Password123.pcapng.gz"
DRSUAPI = "wiki-drsuapi-ntlm-sealed-password-admin.pcapng"
KERBEROS = "wiki-dof-small-asyncemsmdb-krb.pcapng"


# ------------------------------------------------------------------------------------------------ secrets file


def test_secrets_file_formats(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("# test accounts\n\nCORP\\alice:pa:ss word\nbob:hunter2\ncarol::" + "0a" * 16 + "\n", "utf-8")
    s = Secrets.load(f)
    assert [(e.domain, e.user) for e in s.entries] == [("CORP", "alice"), (None, "bob"), (None, "carol")]
    assert s.entries[0].nt_hash == nt_hash("pa:ss word")  # the password runs to the end of the line
    assert s.entries[2].nt_hash == bytes([0x0A] * 16) and s.entries[2].password is None
    assert s.for_user("ALICE", "corp") == [s.entries[0]]
    assert s.for_user("alice", "OTHER") == []
    assert s.for_user("bob", "anything") == [s.entries[1]]
    assert s.for_user("alice", "corp.example.com") == [s.entries[0]]  # NetBIOS name of the DNS domain
    assert s.for_user("alice", "corporate.example") == []
    # MD4 of UTF-16LE "password" (MS-NLMP 4.2.2.1.2 test vector)
    assert nt_hash("Password").hex() == "a4f49c406510bdcab6824ee7c30fd852"


def test_secrets_never_shown(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("CORP\\alice:TopSecret99\n", "utf-8")
    s = Secrets.load(f)
    shown = repr(s) + str(s) + repr(s.entries) + str(s.entries[0])
    assert "TopSecret99" not in shown and s.entries[0].nt_hash.hex() not in shown
    assert "alice" in repr(s.entries[0])
    bad = tmp_path / "bad.txt"
    bad.write_text("ok:fine\nTopSecret99-without-colon\n", "utf-8")
    with pytest.raises(SecretsError) as err:
        Secrets.load(bad)
    assert "line 2" in str(err.value) and "TopSecret99" not in str(err.value)


def test_secrets_env_and_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MAILPUSH_SECRETS_FILE", raising=False)
    assert load_secrets(None) is None
    f = tmp_path / "s.txt"
    f.write_text("u:p\n", "utf-8")
    monkeypatch.setenv("MAILPUSH_SECRETS_FILE", str(f))
    assert len(load_secrets(None)) == 1
    with pytest.raises(SecretsError, match="cannot read"):
        load_secrets(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n", "utf-8")
    with pytest.raises(SecretsError, match="no secrets"):
        load_secrets(tmp_path / "empty.txt")


# ------------------------------------------------------------------------------------------------ helpers


class _Recording(ntlmssp.SessionDecryptor):
    def __init__(self, *a):
        super().__init__(*a)
        self.results = []

    def unseal(self, *a, **k):
        r = super().unseal(*a, **k)
        self.results.append(r)
        return r


def _native(path, secrets_text):
    """Events, warnings, and {frame: clear stub} of every sealed request/response (one PDU per frame here)."""
    with open_capture(path) as cap:
        warnings = []
        dec = _Recording(Secrets.parse(secrets_text), warnings.append)
        events = dissect_batches(cap.batches(), cap.info, sink=EventCollector(warn=warnings.append, decryptor=dec))
    sealed = [e for e in events if e.kind in ("request", "response") and e.auth_level == 6]
    assert len(sealed) == len(dec.results)
    return events, warnings, {e.frame: r for e, r in zip(sealed, dec.results)}


def _tshark_clear_stubs(path, password, extra):
    """tshark's dcerpc.decrypted_stub_data per frame. The interface's own tshark dissector is disabled, or it
    takes the clear stub and the field is not filled."""
    out = subprocess.run(["tshark", "-r", str(path), *extra, "-o", f"ntlmssp.nt_password:{password}",
                          "-Y", "dcerpc.decrypted_stub_data", "-T", "fields", "-e", "frame.number",
                          "-e", "dcerpc.decrypted_stub_data"], capture_output=True, text=True, check=True).stdout
    return {int(f): bytes.fromhex(h) for f, h in (line.split("\t") for line in out.splitlines() if line)}


# ------------------------------------------------------------------------------------------------ public captures


def test_tsch_ntlmv2_same_stubs_as_tshark(public_dir):
    require_tshark()
    path = public_dir / TSCH
    events, warnings, clear = _native(path, "clem:clem")
    assert warnings == []
    theirs = _tshark_clear_stubs(path, "clem", ["--disable-protocol", "taskschedulerservice"])
    assert sorted(theirs) == [10, 13, 15, 18, 20, 22]
    assert sorted(clear) == sorted(theirs)
    for frame, data in theirs.items():
        assert isinstance(clear[frame], ntlmssp.Unsealed) and clear[frame].stub == data, frame
    rows = [e for e in events if e.frame in theirs]
    assert all(e.decrypted and not e.encrypted for e in rows)
    assert [e.stub_len for e in rows] == [len(theirs[e.frame]) for e in rows]


def test_svcctl_same_stubs_as_tshark_with_fragments(public_dir):
    require_tshark()
    path = public_dir / SVCCTL
    events, warnings, clear = _native(path, "DOMAIN\\Administrator:Password123!")
    assert warnings == []
    theirs = _tshark_clear_stubs(path, "Password123!", ["-d", "tcp.port==49679,dcerpc",
                                                        "--disable-protocol", "svcctl"])
    assert sorted(theirs) == [14, 17, 18, 19, 23, 24, 25, 26, 29, 31, 33, 34]
    assert sorted(clear) == sorted(theirs)
    for frame, data in theirs.items():
        if frame == 34:  # tshark shows the reassembled stub on the LAST fragment of call 5 (frames 25..34)
            ours = b"".join(clear[f].stub for f in (25, 26, 29, 31, 33, 34))
        else:
            ours = clear[frame].stub
        assert ours == data, frame
    last = next(e for e in events if e.frame == 34)
    assert last.decrypted and last.stub_len == len(theirs[34]) == 33592


def test_drsuapi_ntlmv1_ess_same_stubs_as_tshark(public_dir):
    """The wiki's password is right. The session is NTLMv1 with extended session security (24-byte NT response
    with an LMv2-style client challenge), and tshark 4.0 does decrypt it with "admin": it only seemed not to
    because tshark fills dcerpc.decrypted_stub_data only when no interface dissector takes the clear stub, and its
    DRSUAPI dissector does. With that dissector off, tshark's 12 stubs equal mailpush's, whose HMAC-MD5
    signatures all verify."""
    require_tshark()
    path = public_dir / DRSUAPI
    events, warnings, clear = _native(path, "LAB\\admin:admin")
    assert warnings == []
    theirs = _tshark_clear_stubs(path, "admin", ["--disable-protocol", "drsuapi"])
    assert sorted(theirs) == sorted(clear) == [14, 16, 17, 18, 20, 21, 22, 23, 24, 25, 29, 30]
    assert all(clear[f].stub == data for f, data in theirs.items())
    assert len(clear) == 12 and all(isinstance(r, ntlmssp.Unsealed) and r.signature_ok for r in clear.values())
    assert all(e.decrypted for e in events if e.frame in clear)
    # IDL_DRSBind (opnum 0) response, frame 16: ends with its DWORD return value, 0 (success)
    assert clear[16].stub[-4:] == b"\0\0\0\0"


def test_drsuapi_session_key_matches_tshark(public_dir):
    require_tshark()
    out = subprocess.run(["tshark", "-r", str(public_dir / DRSUAPI), "-o", "ntlmssp.nt_password:admin", "-V",
                          "-Y", "frame.number==13"], capture_output=True, text=True).stdout
    assert "NTLMv1 authenticated" in out
    tshark_key = out.split("NTLMSSP SessionKey (")[1].split(")")[0]
    seen = {}
    real = ntlmssp.derive_keys

    def spy(*a):
        keys = real(*a)
        seen["key"] = keys.exported_session_key.hex()
        seen["version"] = keys.version
        return keys

    ntlmssp.derive_keys = spy
    try:
        dissect_capture(public_dir / DRSUAPI, secrets=Secrets.parse("admin:admin"))
    finally:
        ntlmssp.derive_keys = real
    assert seen == {"key": tshark_key, "version": "NTLMv1 with extended session security"}


def test_wrong_password_warns_and_decodes_nothing(public_dir):
    path = public_dir / TSCH
    plain, _ = dissect_capture(path)
    events, warnings, clear = _native(path, "clem:not-clem")
    assert len(warnings) == 1
    assert "wrong password" in warnings[0] and "cnn-lab.lan\\clem" in warnings[0]
    assert "TCP connection 0 (192.168.80.128:41722 -> 192.168.42.2:49154)" in warnings[0]
    assert "not-clem" not in warnings[0]
    assert all(isinstance(r, ntlmssp.SealFailure) for r in clear.values())
    # the rows are exactly those without secrets, plus the reason in the note
    for a, b in zip(plain, events):
        assert b.encrypted == a.encrypted and not b.decrypted and b.stub_len == a.stub_len
        if b.frame in clear:
            assert b.note == "not decrypted: wrong password for cnn-lab.lan\\clem"


def test_no_secret_for_the_account(public_dir):
    events, warnings, clear = _native(public_dir / SVCCTL, "OTHER\\Administrator:Password123!\nbob:x")
    assert len(warnings) == 1 and "DOMAIN\\Administrator" in warnings[0] and "no entry" in warnings[0]
    assert not any(e.decrypted for e in events)


def test_netbios_domain_matches_the_dns_domain_of_the_logon(public_dir):
    # the tsch client logs on as cnn-lab.lan\clem
    events, warnings, clear = _native(public_dir / TSCH, "CNN-LAB\\clem:clem")
    assert warnings == [] and all(isinstance(r, ntlmssp.Unsealed) for r in clear.values())


def test_nt_hash_line_decrypts(public_dir):
    events, warnings, clear = _native(public_dir / TSCH, "clem::" + nt_hash("clem").hex())
    assert warnings == [] and len(clear) == 6 and all(isinstance(r, ntlmssp.Unsealed) for r in clear.values())


def test_kerberos_named(public_dir):
    events, info = dissect_capture(public_dir / KERBEROS, secrets=Secrets.parse("someone:pw"))
    krb = [w for w in info.warnings if "sealed with Kerberos: decryption needs a keytab" in w]
    assert len(krb) == 1 and "TCP connection" in krb[0]
    sealed = [e for e in events if e.auth_level == 6 and e.kind in ("request", "response")]
    assert sealed and all(e.encrypted and not e.decrypted for e in sealed)


def test_kerberos_named_by_the_tshark_engine_too(public_dir):
    require_tshark()
    events, info = dissect_capture(public_dir / KERBEROS, engine="tshark", secrets=Secrets.parse("someone:pw"))
    assert len([w for w in info.warnings if "sealed with Kerberos: decryption needs a keytab" in w]) == 1
    assert not any(e.decrypted for e in events)


def test_lost_pdu_breaks_only_its_direction(public_dir):
    """Dropping one sealed client PDU: the RC4 stream of that direction cannot be resynchronised, so the next
    client PDU fails its signature check (warning) instead of decoding garbage."""
    path = public_dir / TSCH
    secrets = Secrets.parse("clem:clem")
    warnings = []
    dec = ntlmssp.SessionDecryptor(secrets, warnings.append)
    pdus = _raw_pdus(path)
    results = []
    for from_client, pdu in pdus:
        ptype = pdu[2]
        frag_len, auth_len = int.from_bytes(pdu[8:10], "little"), int.from_bytes(pdu[10:12], "little")
        if ptype in (11, 12, 14, 15, 16):
            dec.auth_leg(0, from_client, pdu, frag_len, auth_len, True, "TCP connection 0 (test)")
        elif ptype in (0, 2):
            results.append((from_client, dec.unseal(0, from_client, pdu, frag_len, auth_len, True, 24, "x")))
    assert all(isinstance(r, ntlmssp.Unsealed) for _, r in results)
    dec = ntlmssp.SessionDecryptor(secrets, warnings.append)
    results = []
    dropped = False
    for from_client, pdu in pdus:
        ptype = pdu[2]
        frag_len, auth_len = int.from_bytes(pdu[8:10], "little"), int.from_bytes(pdu[10:12], "little")
        if ptype in (11, 12, 14, 15, 16):
            dec.auth_leg(0, from_client, pdu, frag_len, auth_len, True, "TCP connection 0 (test)")
        elif ptype in (0, 2):
            if ptype == 0 and not dropped:
                dropped = True
                continue
            results.append((from_client, dec.unseal(0, from_client, pdu, frag_len, auth_len, True, 24, "x")))
    client = [r for c, r in results if c]
    server = [r for c, r in results if not c]
    assert all(isinstance(r, ntlmssp.SealFailure) for r in client)
    assert all(isinstance(r, ntlmssp.Unsealed) for r in server)
    assert len([w for w in warnings if "signature does not verify" in w]) == 1


def _raw_pdus(path):
    """(from_client, PDU bytes) of the one TCP connection of the tsch capture, via scapy (one PDU per segment
    there)."""
    from scapy.layers.inet import TCP
    from scapy.utils import PcapNgReader

    out = []
    with PcapNgReader(str(path)) as reader:
        for pkt in reader:
            if TCP in pkt and len(pkt[TCP].payload) >= 16 and bytes(pkt[TCP].payload)[0] == 5:
                out.append((pkt[TCP].dport == 49154, bytes(pkt[TCP].payload)))
    return out
