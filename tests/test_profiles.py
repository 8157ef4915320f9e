"""Board profiles: every shipped profile loads, and bad ones are refused naming file, line and key."""
import json
import re

import pytest

from firmware import profiles
from firmware.link import messages as m

SHIPPED = ["esp32-devkitc", "mpy-virtual", "rp2040-emu", "rp2040-pico", "rp2040-pico-spi", "sim"]


def test_shipped_profiles_load_and_say_what_the_issue_asks():
    assert profiles.names() == SHIPPED
    for name in SHIPPED:
        p = profiles.load(name)
        b, hb = p["board"], p["heartbeat"]
        assert b["name"] == name
        assert hb["period_ms"] > 0 and hb["misses"] > 0
        assert b["host_silence_ms"] > hb["period_ms"] * (hb["misses"] + 1)
        assert b["max_sas"] > 0 and p["reset"]["method"]
        assert "fast" in p["crypto"], name
        cfg = profiles.board_config(p)
        json.dumps(cfg)                                 # board.json must be plain JSON
        assert cfg["board_id"] == name and cfg["link"]["kind"] == p["link"]["kind"]
    esp = profiles.load("esp32-devkitc")
    assert esp["link"]["uart"] in (1, 2) and esp["link"]["rtscts"] and esp["link"]["baud"] == 921600
    assert esp["reset"]["method"] == "rts-en"
    assert profiles.board_config(esp)["cpu_hz"] == 240_000_000        # main.py sets it at boot
    pico = profiles.load("rp2040-pico-spi")
    assert pico["board"]["wdt_ms"] <= 8388 and pico["spi"]["data_ready_pin"] >= 0
    assert profiles.board_config(pico)["spi"]["block_size"] == 512
    assert "host" not in profiles.board_config(pico)["spi"]      # the adapter's side stays on the host
    # the boards' fast suite is CBC + HMAC (cryptolib has no GCM), as HELLO will report it
    assert profiles.fast_transforms(esp) == {(m.ENCR_AES_CBC, 128, m.AUTH_HMAC_SHA2_256_128),
                                             (m.ENCR_AES_CBC, 256, m.AUTH_HMAC_SHA2_256_128)}
    assert profiles.board_config(profiles.load("mpy-virtual"))["crypto"] == "pure"


BASE = """\
[board]
name = "t"
mcu = "rp2040"
max_sas = 8
max_frame = 4096
max_batch = 8
host_silence_ms = 3000
wdt_ms = 5000

[link]
kind = "uart"
uart = 0
tx_pin = 0
rx_pin = 1
baud = 115200

[reset]
method = "dtr"

[heartbeat]
period_ms = 200
misses = 3
"""


def write(tmp_path, text):
    p = tmp_path / "t.toml"
    p.write_text(text)
    return str(p)


def error_of(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(profiles.ProfileError) as e:
        profiles.load(path)
    return str(e.value).replace(path, "FILE")


def line_of(text, needle):
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(needle))


def test_the_base_profile_is_valid(tmp_path):
    assert profiles.load(write(tmp_path, BASE))["link"]["tx_pin"] == 0


@pytest.mark.parametrize("old,new,key,words", [
    ("tx_pin = 0", "tx_pin = 4", "link.tx_pin", "GPIO 4 is UART1 TX"),
    ("rx_pin = 1", "rx_pin = 2", "link.rx_pin", "GPIO 2 is UART0 CTS"),
    ("wdt_ms = 5000", "wdt_ms = 9000", "board.wdt_ms", "8388"),
    ("wdt_ms = 5000", "wdt_ms = 0", "board.wdt_ms", "watchdog"),
    ("wdt_ms = 5000", "wdt_ms = 700", "board.wdt_ms", "hung board"),
    ("host_silence_ms = 3000", "host_silence_ms = 500", "board.host_silence_ms", "misses + 1"),
    ("max_sas = 8", "max_sas = \"8\"", "board.max_sas", "must be an integer"),
    ("max_sas = 8", "max_sas = 0", "board.max_sas", "within 1..4096"),
    ("baud = 115200", "baud = true", "link.baud", "must be an integer"),
    ("baud = 115200", "baud = 0", "link.baud", "positive"),
    ("mcu = \"rp2040\"", "mcu = \"stm32\"", "board.mcu", "one of esp32, rp2040"),
    ("kind = \"uart\"", "kind = \"vboard\"", "link.kind", "not a link a rp2040 board has"),
    ("method = \"dtr\"", "method = \"vboard\"", "reset.method", "cannot reset a rp2040"),
    ("method = \"dtr\"", "method = \"ftdi-gpio\"", "reset.method", "spi.host.reset_gpio"),
    ("misses = 3", "misses = 3\nmissses = 4", "heartbeat.missses", "unknown key"),
    ("baud = 115200", "baud = 115200\nrtscts = true", "link.rts_pin", "flow-control"),
])
def test_bad_values_are_refused_naming_file_line_and_key(tmp_path, old, new, key, words):
    text = BASE.replace(old, new)
    assert text != BASE
    msg = error_of(tmp_path, text)
    assert re.match(r"FILE(:\d+)?: %s: " % re.escape(key), msg), msg
    assert words in msg, msg
    table, _, k = key.rpartition(".")
    if ("%s = " % k) in text:
        assert msg.startswith("FILE:%d:" % line_of(text, k + " ")), msg


def test_missing_tables_and_keys(tmp_path):
    msg = error_of(tmp_path, BASE.replace("[reset]\nmethod = \"dtr\"\n", ""))
    assert msg.startswith("FILE: reset: missing table [reset]"), msg
    msg = error_of(tmp_path, BASE.replace("max_batch = 8\n", ""))
    assert msg.startswith("FILE: board.max_batch: missing"), msg
    msg = error_of(tmp_path, BASE + "\n[bogus]\nx = 1\n")
    where = line_of(BASE + "\n[bogus]\nx = 1\n", "[bogus]")
    assert msg.startswith("FILE:%d: bogus: unknown table" % where), msg
    msg = error_of(tmp_path, BASE.replace("max_sas = 8", "max_sas = = 8"))
    assert msg.startswith("FILE: ") and "line" in msg, msg          # tomllib's own position
    with pytest.raises(profiles.ProfileError, match="no board profile 'nope' .known: esp32-devkitc"):
        profiles.load("nope")


SPI = BASE.replace('kind = "uart"\nuart = 0\ntx_pin = 0\nrx_pin = 1\nbaud = 115200', 'kind = "spi-pio"') + """
[spi]
mosi_pin = 2
sck_pin = 3
cs_pin = 4
miso_pin = 5
data_ready_pin = 6
clock_hz = 8000000
block_size = 512
"""


@pytest.mark.parametrize("old,new,key,words", [
    ("sck_pin = 3", "sck_pin = 7", "spi.sck_pin", "consecutive"),
    ("clock_hz = 8000000", "clock_hz = 20000000", "spi.clock_hz", "PIO"),
    ("block_size = 512", "block_size = 514", "spi.block_size", "multiple of 4"),
    ("data_ready_pin = 6", "data_ready_pin = 5", "spi.data_ready_pin", "already spi.miso_pin"),
    ("miso_pin = 5", "miso_pin = 30", "spi.miso_pin", "GPIO 0..29"),
    ("block_size = 512", "block_size = 512\nmode = 1", "spi.mode", "mode 0 only"),
])
def test_spi_pio_constraints(tmp_path, old, new, key, words):
    assert profiles.load(write(tmp_path, SPI))["spi"]["block_size"] == 512
    msg = error_of(tmp_path, SPI.replace(old, new))
    assert re.match(r"FILE:\d+: %s: " % re.escape(key), msg) and words in msg, msg


ESP = BASE.replace('mcu = "rp2040"', 'mcu = "esp32"').replace("uart = 0", "uart = 2") \
    .replace("tx_pin = 0", "tx_pin = 17").replace("rx_pin = 1", "rx_pin = 16") \
    .replace('method = "dtr"', 'method = "rts-en"')


@pytest.mark.parametrize("old,new,key,words", [
    ("tx_pin = 17", "tx_pin = 35", "link.tx_pin", "input-only"),
    ("rx_pin = 16", "rx_pin = 7", "link.rx_pin", "SPI flash"),
    ("uart = 2", "uart = 0", "link.uart", "REPL"),
    ("wdt_ms = 5000", "wdt_ms = 5000\ncpu_hz = 200_000_000", "board.cpu_hz", "80000000, 160000000, 240000000"),
])
def test_esp32_pin_rules(tmp_path, old, new, key, words):
    assert profiles.load(write(tmp_path, ESP))["board"]["mcu"] == "esp32"
    msg = error_of(tmp_path, ESP.replace(old, new))
    assert re.match(r"FILE:\d+: %s: " % re.escape(key), msg) and words in msg, msg
    # input-only pins are fine as inputs
    assert profiles.load(write(tmp_path, ESP.replace("rx_pin = 16", "rx_pin = 36")))
    # the clock main.py sets at boot
    p = profiles.load(write(tmp_path, ESP.replace("wdt_ms = 5000", "wdt_ms = 5000\ncpu_hz = 240_000_000")))
    assert profiles.board_config(p)["cpu_hz"] == 240_000_000
