"""The generated sealed samples (captures/sealed_*.pcap, sealed for real by captures/samplelib/sealed.py): tshark decrypts
them with the manifest's password to the same stubs as mailpush; with --secrets the verdict is that of a plain
session (manifest 'clients_with_secrets') with the same confidence and a reason that says so; both engines agree;
NTLMv1 without extended session security and 56/40-bit keys (which tshark 4.0 cannot check: see
test_ntlmv1_without_ess) decrypt in memory; nothing of a secret reaches any output."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analyzer.dissect import dissect_capture, events_to_dataframe, ntlmssp
from analyzer.dissect.collector import EventCollector
from analyzer.dissect.engine import dissect_batches
from analyzer.dissect.secrets import Secrets
from analyzer.ingest import open_capture
from captures import samplelib
from captures.samplelib import sealed as samplelib_sealed

from conftest import CAPTURES, require_tshark

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = json.loads((CAPTURES / "manifest.json").read_text())
SEALED = [e for e in MANIFEST if e.get("secrets")]


def test_samples_present():
    assert sorted(e["file"] for e in SEALED) == ["sealed_ntlmv1_server_refused.pcap",
                                                 "sealed_ntlmv2_push_working.pcap"]


def _password(entry):
    return entry["secrets"].split(":", 1)[1]


def _native_clear(path, secrets_text):
    got = []

    class Recording(ntlmssp.SessionDecryptor):
        def unseal(self, *a, **k):
            r = super().unseal(*a, **k)
            got.append(r)
            return r

    warnings = []
    with open_capture(path) as cap:
        events = dissect_batches(cap.batches(), cap.info, sink=EventCollector(
            warn=warnings.append, decryptor=Recording(Secrets.parse(secrets_text), warnings.append)))
    sealed = [e for e in events if e.kind in ("request", "response") and e.auth_level == 6]
    return warnings, {e.frame: r for e, r in zip(sealed, got)}


@pytest.mark.parametrize("entry", SEALED, ids=lambda e: e["file"])
def test_tshark_decrypts_the_samples_like_mailpush(entry):
    require_tshark()
    path = CAPTURES / entry["file"]
    out = subprocess.run(["tshark", "-r", str(path), "-o", f"ntlmssp.nt_password:{_password(entry)}",
                          "--disable-protocol", "mapi", "-Y", "dcerpc.decrypted_stub_data", "-T", "fields",
                          "-e", "frame.number", "-e", "dcerpc.decrypted_stub_data"],
                         capture_output=True, text=True, check=True).stdout
    theirs = {int(f): bytes.fromhex(h) for f, h in (line.split("\t") for line in out.splitlines() if line)}
    warnings, ours = _native_clear(path, entry["secrets"])
    assert warnings == []
    plain, _ = dissect_capture(path)
    sealed_rows = [e.frame for e in plain if e.encrypted]
    assert sorted(theirs) == sorted(ours) == sealed_rows and len(sealed_rows) >= 14
    for frame, data in theirs.items():
        assert ours[frame].stub == data, frame


@pytest.mark.parametrize("entry", SEALED, ids=lambda e: e["file"])
def test_sample_verdicts_with_secrets(entry, tmp_path):
    from analyzer.pipeline import analyze_capture

    secrets = Secrets.parse(entry["secrets"])
    plain = analyze_capture(str(CAPTURES / entry["file"]))
    result = analyze_capture(str(CAPTURES / entry["file"]), secrets=secrets)
    assert result.error is None
    (exp,) = entry["clients_with_secrets"]
    (v,) = result.clients
    (before,) = plain.clients
    assert (before.verdict, before.cause) == (entry["clients"][0]["verdict"], entry["clients"][0]["cause"])
    assert (v.verdict, v.cause, v.callback, v.mailbox) == (exp["verdict"], exp["cause"], exp["callback"],
                                                          exp["mailbox"])
    assert "0x%08x" % v.register_status == exp["register_status"]
    assert set(exp["evidence_frames"]) <= {e.frame for e in v.evidence}
    assert "decrypted with --secrets" in v.reason and "decrypted" not in before.reason
    # the confidence is that of the same situation on a plain session (the unsealed sample of the same cause)
    twin = {"push_working": "push_working.pcap", "server_refused": "server_refused.pcap"}[v.cause]
    (plain_twin,) = analyze_capture(str(CAPTURES / twin)).clients
    assert v.confidence == plain_twin.confidence > before.confidence


@pytest.mark.parametrize("entry", SEALED, ids=lambda e: e["file"])
def test_engines_agree_on_decrypted_events(entry):
    require_tshark()
    secrets = Secrets.parse(entry["secrets"])
    native, _ = dissect_capture(CAPTURES / entry["file"], secrets=secrets)
    tshark, info = dissect_capture(CAPTURES / entry["file"], engine="tshark", secrets=secrets)
    assert not [w for w in info.warnings if "decrypted none" in w]
    cols = ["frame", "kind", "opnum", "encrypted", "decrypted", "stub_len", "callback", "context_hex", "status",
            "hnotification", "poll_max_ms", "user_dn", "rop_ids"]
    a = events_to_dataframe([e for e in native if e.kind != "udp"])[cols]
    b = events_to_dataframe([e for e in tshark if e.kind != "udp"])[cols]
    assert a.equals(b), a.compare(b)
    assert int(a["decrypted"].sum()) >= 14 and not a["encrypted"].any()
    # every decoder ran on the clear stubs: registration, logon and poll answers
    reg = a[(a["kind"] == "request") & (a["opnum"] == 4)].iloc[0]
    assert reg["callback"] == entry["clients_with_secrets"][0]["callback"] and len(reg["context_hex"]) == 16
    assert a["user_dn"].dropna().tolist() == [entry["clients_with_secrets"][0]["mailbox"]]
    assert a["poll_max_ms"].dropna().tolist() == [60000] and a["status"].notna().any()
    assert a["rop_ids"].notna().any()


def test_tshark_engine_wrong_password_warns():
    require_tshark()
    entry = SEALED[0]
    events, info = dissect_capture(CAPTURES / entry["file"], engine="tshark", secrets=Secrets.parse("sam:wrong"))
    assert any("decrypted none" in w and "TCP connection" in w for w in info.warnings)
    assert not any(e.decrypted for e in events)
    assert not [d for d in os.listdir(os.environ.get("TMPDIR", "/tmp")) if d.startswith("mailpush-tshark-")]


# -------------------------------------------------------------------------------- in-memory sessions


def _session(version, password="Pass-word 1", flags=None, calls=4):
    """(client/server PDUs of a sealed EMSMDB session built by the generator's sealer)."""
    gen, sealed = samplelib, samplelib_sealed
    rng = random.Random(7)
    s = sealed.NtlmSealer(rng, "ursula", "CONTOSO", password, version=version, flags=flags)
    pdus = [(True, gen.co_pdu(gen.PT_BIND, 1, gen.bind_body([(0, gen.EMSMDB, [(gen.NDR_UUID, 2)])]),
                              auth=(10, 6, s.negotiate()))),
            (False, gen.co_pdu(gen.PT_BIND_ACK, 1, gen.bind_ack_body([(0, 0, (gen.NDR_UUID, 2))], "6001", 1),
                               auth=(10, 6, s.challenge()))),
            (True, gen.co_pdu(gen.PT_AUTH3, 1, b"\0" * 4, auth=(10, 6, s.authenticate())))]
    clear = []
    for i in range(calls):
        stub = bytes(rng.randrange(256) for _ in range(20 + 13 * i))
        for from_client, build in ((True, gen.request_body(0, 11, stub)), (False, gen.response_body(0, stub[::-1]))):
            ptype = gen.PT_REQUEST if from_client else gen.PT_RESPONSE
            pdu = gen.co_pdu(ptype, 2 + i, build, auth=(10, 6, b"\0" * 16))
            pdus.append((from_client, s.seal(pdu, from_client)))
            clear.append(stub if from_client else stub[::-1])
    return pdus, clear


def _decrypt(pdus, secrets_text):
    warnings = []
    dec = ntlmssp.SessionDecryptor(Secrets.parse(secrets_text), warnings.append)
    out = []
    for from_client, pdu in pdus:
        frag_len, auth_len = int.from_bytes(pdu[8:10], "little"), int.from_bytes(pdu[10:12], "little")
        if pdu[2] in (0, 2):
            out.append(dec.unseal(5, from_client, pdu, frag_len, auth_len, True, 24, "TCP connection 5 (t)"))
        else:
            dec.auth_leg(5, from_client, pdu, frag_len, auth_len, True, "TCP connection 5 (t)")
    return out, warnings


@pytest.mark.parametrize("version,flags", [
    ("v1", None),  # NTLMv1 without extended session security: one RC4 stream for both directions, CRC32 MAC
    ("v1-ess", None),
    ("v2", None),
    ("v2", 0xE2888235 & ~0x20000000),  # 56-bit
    ("v2", 0xE2888235 & ~0xA0000000),  # 40-bit
    ("v1-ess", 0xE2088235 & ~0x40000000),  # no key exchange: the key exchange key seals
    ("v1", 0xE2008235 | 0x80),  # LM session key (NTLMSSP_NEGOTIATE_LM_KEY), 56-bit: 7 key bytes + 0xA0
    ("v1", (0xE2008235 | 0x80) & ~0xA0000000),  # LM session key, 40-bit: 5 key bytes + E5 38 B0
])
def test_in_memory_sessions(version, flags):
    """tshark 4.0 cannot serve as the check for NTLMv1 without extended session security: its NTLMv1 code
    (create_ntlmssp_v1_key) takes the LM path there and never accepts a password. These sessions come from the
    generator's sealer, written from MS-NLMP separately from the decryptor."""
    pdus, clear = _session(version, flags=flags)
    out, warnings = _decrypt(pdus, "CONTOSO\\ursula:Pass-word 1")
    assert warnings == []
    assert [r.stub for r in out] == clear
    out, warnings = _decrypt(pdus, "ursula:pass-word 1")
    assert len(warnings) == 1 and "wrong password" in warnings[0] and "CONTOSO\\ursula" in warnings[0]
    assert all(isinstance(r, ntlmssp.SealFailure) for r in out)


def test_lm_session_key_needs_the_password_not_the_hash():
    pdus, clear = _session("v1", flags=0xE2008235 | 0x80)
    from analyzer.dissect.secrets import nt_hash

    out, warnings = _decrypt(pdus, "ursula::" + nt_hash("Pass-word 1").hex())
    assert len(warnings) == 1 and "LM session key" in warnings[0] and "not supported" in warnings[0]
    assert all(isinstance(r, ntlmssp.SealFailure) for r in out)


def test_tampered_pdu_fails_its_signature():
    pdus, clear = _session("v2")
    from_client, pdu = pdus[5]
    pdus[5] = (from_client, pdu[:30] + bytes([pdu[30] ^ 1]) + pdu[31:])  # one bit of the sealed stub
    out, warnings = _decrypt(pdus, "ursula:Pass-word 1")
    assert isinstance(out[2], ntlmssp.SealFailure) and "signature" in out[2].reason
    assert [w for w in warnings if "signature does not verify" in w]


# -------------------------------------------------------------------------------- secrets never leak


def test_secrets_never_in_any_output(tmp_path):
    """Every output of analyze (all formats), events (csv, json), batch, with warnings on stderr and
    MAILPUSH_DEBUG set, holds neither the password nor its NT hash."""
    entry = SEALED[1]  # the password with a colon and a space
    password = _password(entry)
    secret_file = tmp_path / "secrets.txt"
    secret_file.write_text(entry["secrets"] + "\nother:Another-Pa55\n", "utf-8")
    nt = Secrets.load(secret_file).entries[0].nt_hash
    forbidden = [password, "Another-Pa55", nt.hex(), nt.hex().upper(), password.encode("utf-16-le").decode("latin-1")]
    capture = str(CAPTURES / entry["file"])
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("tina:not-it-Zq9\n", "utf-8")
    forbidden.append("not-it-Zq9")
    env = dict(os.environ, PYTHONPATH=str(ROOT), MAILPUSH_DEBUG="1")
    runs = []
    for fmt in ("text", "json", "csv", "html"):
        runs.append(["analyze", capture, "--format", fmt, "--secrets", str(secret_file)])
    runs.append(["analyze", capture, "--secrets", str(wrong)])
    runs.append(["analyze", capture, "--engine", "tshark", "--secrets", str(secret_file), "--format", "json"])
    for fmt in ("csv", "json"):
        runs.append(["events", capture, "--format", fmt, "--secrets", str(secret_file)])
    runs.append(["batch", capture, "-o", str(tmp_path / "r.csv"), "--jobs", "1", "--secrets", str(secret_file)])
    bad = tmp_path / "bad.txt"
    bad.write_text("Not-A-Line-Zq8\n", "utf-8")
    forbidden.append("Not-A-Line-Zq8")
    runs.append(["analyze", capture, "--secrets", str(bad)])
    decrypted_seen = False
    for args in runs:
        if "--engine" in args and not shutil.which("tshark"):
            continue
        p = subprocess.run([str(Path(sys.executable).parent / "mailpush"), *args], capture_output=True, env=env)
        text = p.stdout.decode("utf-8", "replace") + p.stderr.decode("utf-8", "replace")
        if args[0] == "batch":
            text += (tmp_path / "r.csv").read_text("utf-8")
        for f in forbidden:
            assert f not in text, (args, f)
        decrypted_seen |= "decrypted with --secrets" in text
    assert decrypted_seen


def _der(tag, body):
    n = len(body)
    length = bytes([n]) if n < 0x80 else bytes([0x81, n]) if n < 0x100 else bytes([0x82]) + n.to_bytes(2, "big")
    return bytes([tag]) + length + body


NTLM_OID = bytes.fromhex("060a2b06010401823702020a")


@pytest.mark.parametrize("reset", [True, False])
def test_spnego_wrapped_ntlm_with_mech_list_mic(reset):
    """auth_type 9 (SPNEGO, what Outlook asks for): the NTLM messages travel in negTokenInit/negTokenResp, the
    third leg is an alter_context, and each side sends a mechListMIC. Windows resets the RC4 states after it
    (reset=True); without the reset the first PDU of each direction starts 8 RC4 bytes and one sequence number
    later. Both decrypt."""
    gen, sealed = samplelib, samplelib_sealed
    rng = random.Random(11)
    s = sealed.NtlmSealer(rng, "vera", "CONTOSO", "Spnego-Pw1", version="v2")
    mech_types = _der(0x30, NTLM_OID)
    init = _der(0x60, bytes.fromhex("06062b0601050502") + _der(0xA0, _der(0x30, _der(0xA0, mech_types)
                                                                             + _der(0xA2, _der(0x04, s.negotiate())))))

    def resp(state, token=None, mic=None, mech=False):
        body = _der(0xA0, _der(0x0A, bytes([state])))
        if mech:
            body += _der(0xA1, NTLM_OID)
        if token:
            body += _der(0xA2, _der(0x04, token))
        if mic:
            body += _der(0xA3, _der(0x04, mic))
        return _der(0xA1, _der(0x30, body))

    ctx = [(0, gen.EMSMDB, [(gen.NDR_UUID, 2)])]
    pdus = [(True, gen.co_pdu(gen.PT_BIND, 1, gen.bind_body(ctx), auth=(9, 6, init))),
            (False, gen.co_pdu(gen.PT_BIND_ACK, 1, gen.bind_ack_body([(0, 0, (gen.NDR_UUID, 2))], "6001", 1),
                               auth=(9, 6, resp(1, s.challenge(), mech=True))))]
    auth = s.authenticate()
    mic = b"\x01" + b"\0" * 15  # (its value does not matter here)
    pdus.append((True, gen.co_pdu(gen.PT_ALTER, 2, gen.bind_body(ctx), auth=(9, 6, resp(1, auth, mic=mic)))))
    pdus.append((False, gen.co_pdu(gen.PT_ALTER_RESP, 2, gen.bind_ack_body([(0, 0, (gen.NDR_UUID, 2))], "", 1),
                                   auth=(9, 6, resp(0, mic=b"\x01" + b"\0" * 15)))))
    if not reset:  # the mechListMIC checksums took 8 RC4 bytes and one sequence number of each direction
        for d in (True, False):
            s._rc4[d].encrypt(b"\0" * 8)
            s._seq[d] += 1
    clear = []
    for i in range(3):
        stub = bytes(rng.randrange(256) for _ in range(33 + i))
        for from_client, body in ((True, gen.request_body(0, 11, stub)), (False, gen.response_body(0, stub[::-1]))):
            ptype = gen.PT_REQUEST if from_client else gen.PT_RESPONSE
            pdu = gen.co_pdu(ptype, 3 + i, body, auth=(9, 6, b"\0" * 16))
            pdus.append((from_client, s.seal(pdu, from_client)))
            clear.append(stub if from_client else stub[::-1])
    out, warnings = _decrypt(pdus, "vera:Spnego-Pw1")
    assert warnings == []
    assert [r.stub for r in out] == clear


def _with_ctx_id(pdu: bytes, auth_ctx_id: int) -> bytes:
    frag_len, auth_len = int.from_bytes(pdu[8:10], "little"), int.from_bytes(pdu[10:12], "little")
    at = frag_len - auth_len - 8 + 4
    return pdu[:at] + auth_ctx_id.to_bytes(4, "little") + pdu[at + 4:]


def test_two_security_contexts_one_by_alter_context():
    """One connection, two NTLM security contexts (auth_context_id 0 from the bind, 1 from an alter_context
    after an unauthenticated bind leg), different accounts, PDUs interleaved: each decrypts with its own keys;
    a wrong password for one leaves the other alone."""
    gen, sealed = samplelib, samplelib_sealed
    rng = random.Random(5)
    a = sealed.NtlmSealer(rng, "wanda", "CONTOSO", "First-Pw1", version="v2")
    b = sealed.NtlmSealer(rng, "xavier", "CONTOSO", "Second-Pw2", version="v1-ess")
    ctx = [(0, gen.EMSMDB, [(gen.NDR_UUID, 2)])]
    ack = gen.bind_ack_body([(0, 0, (gen.NDR_UUID, 2))], "6001", 1)

    def leg(ptype, call_id, body, token, ctx_id):
        return _with_ctx_id(gen.co_pdu(ptype, call_id, body, auth=(10, 6, token)), ctx_id)

    pdus = [(True, leg(gen.PT_BIND, 1, gen.bind_body(ctx), a.negotiate(), 0)),
            (False, leg(gen.PT_BIND_ACK, 1, ack, a.challenge(), 0)),
            (True, leg(gen.PT_AUTH3, 1, b"\0" * 4, a.authenticate(), 0)),
            (True, leg(gen.PT_ALTER, 2, gen.bind_body(ctx), b.negotiate(), 1)),
            (False, leg(gen.PT_ALTER_RESP, 2, ack, b.challenge(), 1)),
            (True, leg(gen.PT_AUTH3, 2, b"\0" * 4, b.authenticate(), 1))]
    clear = []
    for i in range(6):
        sealer, ctx_id = (a, 0) if i % 2 == 0 else (b, 1)
        stub = bytes(rng.randrange(256) for _ in range(17 + i))
        for from_client, body in ((True, gen.request_body(0, 11, stub)), (False, gen.response_body(0, stub[::-1]))):
            ptype = gen.PT_REQUEST if from_client else gen.PT_RESPONSE
            pdu = _with_ctx_id(gen.co_pdu(ptype, 10 + i, body, auth=(10, 6, b"\0" * 16)), ctx_id)
            pdus.append((from_client, sealer.seal(pdu, from_client)))
            clear.append((ctx_id, stub if from_client else stub[::-1]))
    out, warnings = _decrypt(pdus, "wanda:First-Pw1\nCONTOSO\\xavier:Second-Pw2")
    assert warnings == [] and [r.stub for r in out] == [c for _, c in clear]
    assert {r.account for r in out} == {"CONTOSO\\wanda", "CONTOSO\\xavier"}
    out, warnings = _decrypt(pdus, "wanda:First-Pw1\nxavier:wrong")
    assert len(warnings) == 1 and "CONTOSO\\xavier" in warnings[0] and "security context 1" in warnings[0]
    assert [isinstance(r, ntlmssp.Unsealed) for r in out] == [c == 0 for c, _ in clear]


def test_batch_local_pool_and_dask_decrypt():
    """--secrets reach the batch workers: a local process pool and a real Dask LocalCluster (worker processes)
    both give the decrypted verdict."""
    from analyzer.batch import score

    entry = SEALED[1]
    secrets = Secrets.parse(entry["secrets"])
    paths = [str(CAPTURES / entry["file"])]
    exp = entry["clients_with_secrets"][0]
    local = score(paths, jobs=1, secrets=secrets, progress=False)
    assert local[["verdict", "cause", "callback"]].values.tolist() == [[exp["verdict"], exp["cause"], exp["callback"]]]
    import distributed  # installed by make test: a broken install fails
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as c, \
            distributed.Client(c) as client:
        remote = score(paths, client=client, secrets=secrets, progress=False)
    assert remote[["verdict", "cause", "callback"]].values.tolist() == [[exp["verdict"], exp["cause"],
                                                                        exp["callback"]]]
    assert "decrypted with --secrets" in remote["reason"].iloc[0]
