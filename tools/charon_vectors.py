"""Capture IKEv2 messages between two strongSwan charons, with the keys to read them
(root; writes tests/vectors/charon_ike.json, which tests/test_charon_vectors.py checks).

    python -m tools.charon_vectors [--out tests/vectors/charon_ike.json]

Two charons (5.9.x, kernel-libipsec) in namespaces on either side of a forwarding router
(testbed/natrouter.py, no NAT) whose tap records every UDP datagram. They set up an IKE SA
with ECDSA certificates (CERT, CERTREQ, AUTH, IDi/IDr, TSi/TSr), rekey the Child SA with PFS
and the IKE SA (CREATE_CHILD_SA in both forms), add a second, narrowed Child SA, run a liveness
check and delete everything (INFORMATIONAL). The charons log at level 4, where strongSwan prints
the SK_e/SK_a keys it derives; each protected message is stored with the key that opens it,
found by trying every logged key on it (the AEAD tag decides). Nothing of our own IKE code takes
part: the bytes are charon's, the test decrypts them with the `cryptography` library.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from testbed import charon as charon_mod
from testbed.natrouter import INSIDE, OUTSIDE, NatRouter
from testbed.pki import TestCa

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "vectors" / "charon_ike.json"
IKE, ESP, ESP_PFS = "aes256gcm16-prfsha256-x25519", "aes256gcm16", "aes128gcm16-ecp256"
A_ID, B_ID = "a.charon.example", "b.charon.example"
A_IN, B_IN = "198.51.100.1", "203.0.113.1"
NON_ESP_MARKER = b"\0\0\0\0"
_KEY_LINE = re.compile(r"Sk_(e[ir]) secret => (\d+) bytes @")
_HEX_LINE = re.compile(r"(?:^|\] |> )\s*\d+: ((?:[0-9A-F]{2} )*[0-9A-F]{2})")


def conn(me, peer, my_id, peer_id, cert_pem, ca_pem, lts, rts):
    child = {"local_ts": [lts], "remote_ts": [rts], "esp_proposals": [ESP_PFS, ESP], "mode": "tunnel",
             "rekey_time": "0", "start_action": "none"}
    # a narrower child, proposed by b only: a takes it under its "net" (TS narrowing, §2.9)
    # (charon installs a route for it with our inner address as the source: it must be local)
    narrow = dict(child, local_ts=[B_IN + "/32[udp]"], remote_ts=[A_IN + "/32[udp]"], esp_proposals=[ESP, ESP_PFS])
    return {"version": "2", "local_addrs": [me], "remote_addrs": [peer], "proposals": [IKE], "encap": "no",
            "mobike": "no", "rekey_time": "0", "reauth_time": "0", "dpd_delay": "0", "unique": "no",
            "local": {"auth": "pubkey", "id": my_id, "certs": [cert_pem]},
            "remote": {"auth": "pubkey", "id": peer_id, "cacerts": [ca_pem]},
            "children": {"net": child, "udp": narrow} if my_id == B_ID else {"net": child}}


def logged_keys(log: str) -> list[bytes]:
    """Every SK_ei / SK_er charon printed at log level 4 (strongSwan's %B: a length line, then
    hex dump lines of 16 bytes)."""
    keys, lines, i = [], log.splitlines(), 0
    while i < len(lines):
        m = _KEY_LINE.search(lines[i])
        i += 1
        if not m:
            continue
        n, raw = int(m.group(2)), b""
        while len(raw) < n and i < len(lines):
            h = _HEX_LINE.search(lines[i])
            if not h:
                break
            raw += bytes.fromhex(h.group(1).replace(" ", ""))
            i += 1
        if len(raw) == n:
            keys.append(raw)
    return keys


def opens(data: bytes, key: bytes) -> bool:
    """Does ``key`` (AES-GCM key + 4-byte salt, RFC 5282) open this message's Encrypted payload?"""
    hdr_len, iv_len = 28, 8                 # IKE header; the Encrypted payload's 8-byte IV (RFC 5282)
    aad = data[:hdr_len + 4]
    iv = data[hdr_len + 4:hdr_len + 4 + iv_len]
    try:
        AESGCM(key[:-4]).decrypt(key[-4:] + iv, data[hdr_len + 4 + iv_len:], aad)
        return True
    except InvalidTag:
        return False


def capture(state: str) -> dict:
    ca = TestCa("ecdsa")
    ca_pem = ca.cert_pem()
    a_cert, b_cert = ca.issue(A_ID), ca.issue(B_ID)
    with NatRouter(nat=False, lo_a=[A_IN], lo_b=[B_IN]) as net:
        ca_a = charon_mod.Charon(net.ns_a, os.path.join(state, "a"), log_groups={"ike": 4})
        ca_b = charon_mod.Charon(net.ns_b, os.path.join(state, "b"), log_groups={"ike": 4})
        try:
            for c, cert in ((ca_a, a_cert), (ca_b, b_cert)):
                c.start()
                c.load_ca(ca_pem)
                c.load_key(cert.key_pem(), "ecdsa")
            ca_a.load_conn("v", conn(INSIDE, OUTSIDE, A_ID, B_ID, a_cert.cert_pem(), ca_pem,
                                     "198.51.100.0/24", "203.0.113.0/24"))
            ca_b.load_conn("v", conn(OUTSIDE, INSIDE, B_ID, A_ID, b_cert.cert_pem(), ca_pem,
                                     "203.0.113.0/24", "198.51.100.0/24"))
            ca_a.initiate("net", "v")                                   # IKE_SA_INIT, IKE_AUTH
            list(ca_a.session().rekey({"child": "net"}))                # CREATE_CHILD_SA, PFS (ecp256)
            time.sleep(0.5)
            ca_b.initiate("udp", "v")                                   # CREATE_CHILD_SA, narrowed TS
            list(ca_b.session().rekey({"ike": "v"}))                    # CREATE_CHILD_SA of the IKE SA
            time.sleep(0.5)
            ca_b.terminate(child="udp")                                 # INFORMATIONAL Delete ESP
            ca_a.terminate(ike="v")                                     # INFORMATIONAL Delete IKE
            time.sleep(0.5)
            logs = ca_a.log() + "\n" + ca_b.log()
        except Exception:
            print(ca_a.log_tail(40), "\n----\n", ca_b.log_tail(40))
            raise
        finally:
            ca_a.stop()
            ca_b.stop()
        seen = [u for u in net.udp(side="out") if 500 in (u.src[1], u.dst[1]) or 4500 in (u.src[1], u.dst[1])]
    keys = logged_keys(logs)
    if len(keys) < 4:
        raise SystemExit(f"charon logged {len(keys)} SK_e keys: is log level 4 in effect?")
    messages = []
    for u in seen:
        data = u.payload
        if u.dst[1] == 4500 or u.src[1] == 4500:
            if data[:4] != NON_ESP_MARKER:
                continue                                    # ESP or a keepalive
            data = data[4:]
        protected = data[16] == 46                           # next payload: Encrypted (SK)
        entry = {"from": "a" if u.src[0] == INSIDE else "b", "wire": data.hex()}
        if protected:
            key = next((k for k in keys if opens(data, k)), None)
            if key is None:
                raise SystemExit(f"no logged key opens the message {data[:28].hex()}")
            entry["sk_e"] = key.hex()
        messages.append(entry)
    return {"charon": charon_version(), "ike": IKE, "esp": [ESP_PFS, ESP],
            "note": "IKE messages between two strongSwan charons (tools/charon_vectors.py); sk_e is the "
                    "AES-GCM-16 key + 4-byte salt that opens the Encrypted payload (RFC 5282)",
            "messages": messages}


def charon_version() -> str:
    import subprocess
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "strongswan-charon"], capture_output=True,
                         text=True).stdout
    return f"strongSwan {out.strip() or 'unknown'}"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.charon_vectors", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    state = tempfile.mkdtemp(prefix="ikv", dir="/tmp")
    try:
        doc = capture(state)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(doc['messages'])} messages to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
