"""Connections from TOML: what parses, and validation errors that name the key."""
import pytest

from host.ike.config import ConfigError, load, loads, parse_retransmit, parse_ts
from host.ike.constants import DhGroup, Encr, Esn, Integ, Prf, ProtocolId
from host.ike.proposals import (
    OffloadCapabilities, ProposalError, describe, filter_child_specs, parse_proposal,
)
from testbed.pki import TestCa

GOOD = """
[connections.gw]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
proposals = ["aes256gcm16-prfsha256-x25519", "aes128-sha256-modp2048"]
psk = "a-long-enough-secret"
start_action = "start"
[connections.gw.local]
auth = "psk"
id = "a.example"
[connections.gw.remote]
auth = "psk"
id = "b.example"
[connections.gw.children.net]
local_ts = ["198.51.100.0/24"]
remote_ts = ["203.0.113.0/24[tcp/443]", "203.0.113.9-203.0.113.20"]
esp_proposals = ["aes128gcm16", "aes128-sha256-esn"]
mode = "tunnel"
"""


def test_good_config():
    conns = loads(GOOD)
    c = conns["gw"]
    assert c.remote_host == "192.0.2.2" and c.start_action == "start" and c.encap
    assert [describe(p) for p in c.proposals] == ["aes256gcm16-prfsha256-x25519", "aes128-sha256-prfsha256-modp2048"]
    assert str(c.local.id) == "a.example" and str(c.remote.id) == "b.example"
    ch = c.children["net"]
    assert ch.remote_ts[0].ip_proto == 6 and (ch.remote_ts[0].start_port, ch.remote_ts[0].end_port) == (443, 443)
    assert ch.esp_proposals[1].esn == (Esn.YES,)
    assert "a-long-enough-secret" not in repr(c)        # never show the PSK


@pytest.mark.parametrize("edit,key", [
    (('proposals = ["aes256gcm16-prfsha256-x25519", "aes128-sha256-modp2048"]',
      'proposals = ["aes256gcm16-prfsha256-x25519", "aes128-sha999-modp2048"]'), "connections.gw.proposals[1]"),
    (('esp_proposals = ["aes128gcm16", "aes128-sha256-esn"]', 'esp_proposals = ["aes128gcm16-prfsha256"]'),
     "connections.gw.children.net.esp_proposals[0]"),
    (('remote_addrs = ["192.0.2.2"]', 'remote_addrs = ["192.0.2.300"]'), "connections.gw.remote_addrs[0]"),
    (('local_ts = ["198.51.100.0/24"]', 'local_ts = ["198.51.100.0/33"]'), "connections.gw.children.net.local_ts[0]"),
    (('mode = "tunnel"', 'mode = "beet"'), "connections.gw.children.net.mode"),
    (('psk = "a-long-enough-secret"', 'psk = "short"'), "connections.gw.psk"),
    (('psk = "a-long-enough-secret"', ''), "connections.gw.psk"),
    (('start_action = "start"', 'start_action = "sometimes"'), "connections.gw.start_action"),
    (('start_action = "start"', 'start_acton = "start"'), "connections.gw.start_acton"),
    (('auth = "psk"\nid = "a.example"', 'auth = "certs"\nid = "a.example"'), "connections.gw.local.auth"),
    (('[connections.gw.remote]\nauth = "psk"', '[connections.gw.remote]\nauth = "pubkey"'),
     "connections.gw.remote.cacerts"),
    (('local_addrs = ["192.0.2.1"]', 'local_addrs = ["192.0.2.1"]\nlocal_port = 70000'), "connections.gw.local_port"),
    (('local_addrs = ["192.0.2.1"]', 'local_addrs = ["192.0.2.1"]\nencap = "yes"'), "connections.gw.encap"),
])
def test_errors_name_the_key(edit, key):
    text = GOOD.replace(*edit)
    assert text != GOOD
    with pytest.raises(ConfigError) as e:
        loads(text)
    assert e.value.key == key, str(e.value)
    assert str(e.value).startswith(key + ":")


def test_pubkey_files_are_loaded_relative_to_the_config(tmp_path):
    ca = TestCa()
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem())
    ca.issue("a.example").write(tmp_path, "a")
    text = GOOD.replace('[connections.gw.local]\nauth = "psk"\nid = "a.example"',
                        '[connections.gw.local]\nauth = "pubkey"\ncert = "a.crt"\nkey = "a.key"') \
        .replace('[connections.gw.remote]\nauth = "psk"',
                 '[connections.gw.remote]\nauth = "pubkey"\ncacerts = ["ca.crt"]') \
        .replace('psk = "a-long-enough-secret"\n', '')
    p = tmp_path / "ike.toml"
    p.write_text(text)
    c = load(p)["gw"]
    assert c.local.auth == "pubkey" and c.local.key is not None
    assert str(c.local.id) == "O=ikeoffload test, CN=a.example"        # defaults to the cert subject
    assert len(c.remote.cacerts) == 1
    (tmp_path / "a.key").write_text("garbage")
    with pytest.raises(ConfigError) as e:
        load(p)
    assert e.value.key == "connections.gw.local.key"
    (tmp_path / "a.key").unlink()
    with pytest.raises(ConfigError) as e:
        load(p)
    assert e.value.key == "connections.gw.local.key" and "cannot read" in str(e.value)


def test_bad_toml_is_reported():
    with pytest.raises(ConfigError):
        loads("[connections.gw\n")


def test_retransmit_policy():
    r = parse_retransmit({"timeout": 0.5, "base": 2, "tries": 3})
    assert [r.delay(n) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    with pytest.raises(ConfigError) as e:
        parse_retransmit({"base": 0.5})
    assert e.value.key == "retransmit.base"


@pytest.mark.parametrize("text,expect", [
    ("aes256gcm16-prfsha256-x25519", ((Encr.AES_GCM_16, 256),), ),
    ("aes128-sha256-modp2048", ((Encr.AES_CBC, 128),)),
    ("aes128gcm16-aes256gcm16-prfsha384-ecp256-x25519", ((Encr.AES_GCM_16, 128), (Encr.AES_GCM_16, 256))),
])
def test_ike_proposal_strings(text, expect):
    s = parse_proposal(text)
    assert s.encr == expect and s.protocol == ProtocolId.IKE and s.dh


def test_ike_proposal_derives_prf_from_integrity():
    s = parse_proposal("aes128-sha384-ecp256")
    assert s.integ == (Integ.HMAC_SHA2_384_192,) and s.prf == (Prf.HMAC_SHA2_384,) and s.dh == (DhGroup.ECP_256,)


@pytest.mark.parametrize("text", ["", "aes128gcm16-x25519", "aes128-x25519", "aes128gcm16-sha256-prfsha256-x25519",
                                  "aes128-sha256", "aes128gcm16-aes128-prfsha256-x25519", "blowfish-sha256-x25519",
                                  "aes128-sha256-modp2048-esn"])
def test_bad_ike_proposals(text):
    with pytest.raises(ProposalError):
        parse_proposal(text)


def test_capability_filter_splits_proposals():
    caps = OffloadCapabilities(frozenset({(Encr.AES_CBC, 128, Integ.HMAC_SHA2_256_128)}))
    specs = [parse_proposal("aes128-aes256-sha256-sha512", ProtocolId.ESP),
             parse_proposal("aes128gcm16", ProtocolId.ESP)]
    out = filter_child_specs(specs, caps)
    assert [describe(s) for s in out] == ["aes128-sha256"]
    esn = [parse_proposal("aes128-sha256-esn-noesn", ProtocolId.ESP)]
    assert filter_child_specs(esn, caps)[0].esn == (Esn.NO,)
    assert filter_child_specs(esn, OffloadCapabilities(caps.transforms, esn=True))[0].esn == (Esn.YES, Esn.NO)


def test_ts_syntax():
    assert parse_ts("dynamic[udp/500]") == "dynamic/17/500/500"
    t = parse_ts("10.0.0.1-10.0.0.9[6/1000-2000]")
    assert (t.ip_proto, t.start_port, t.end_port) == (6, 1000, 2000)
    for bad in ("10.0.0.9-10.0.0.1", "10.0.0.0/8[tcp/9-1]", "10.0.0.0/8[nope]", "2001:db8::/129"):
        with pytest.raises(ValueError):
            parse_ts(bad)
