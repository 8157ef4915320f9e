"""SPI link blocks and the go-back-N endpoint (firmware/link/spi.py), on CPython and MicroPython."""
from firmware.link import spi
from firmware.tests.util import raises


class Lcg:
    """Deterministic pseudo-random numbers that behave the same on both runtimes."""

    def __init__(self, seed):
        self.x = seed

    def below(self, n):
        self.x = (self.x * 1103515245 + 12345) & 0x7FFFFFFF
        return (self.x >> 8) % n


def test_block_round_trip_and_fixed_size():
    b = spi.encode_block(128, spi.MAGIC_HOST, spi.F_DATA, 0x1234, 0x0BCD, 7, 6, b"hello")
    assert len(b) == 128, len(b)
    got = spi.decode_block(b, spi.MAGIC_HOST)
    assert got == (spi.F_DATA, 0x1234, 0x0BCD, 7, 6, b"hello"), got
    full = bytes(range(256)) * 2
    b = spi.encode_block(512, spi.MAGIC_BOARD, 0, 1, 0, 0, 255, full[:512 - spi.OVERHEAD])
    assert spi.decode_block(b, spi.MAGIC_BOARD)[5] == full[:512 - spi.OVERHEAD]
    raises(ValueError, spi.encode_block, 64, spi.MAGIC_HOST, 0, 1, 0, 0, 0, b"x" * 51)


def test_every_single_bit_flip_is_caught():
    b = spi.encode_block(64, spi.MAGIC_HOST, spi.F_DATA, 99, 0, 1, 0, b"payload")
    for i in range(len(b)):
        for bit in (0x01, 0x80):
            bad = bytearray(b)
            bad[i] ^= bit
            e = raises(spi.BlockError, spi.decode_block, bad, spi.MAGIC_HOST)
            assert e.reason in ("bad_crc", "bad_magic"), (i, e.reason)


def test_idle_lines_and_foreign_blocks_are_told_apart():
    for fill in (0x00, 0xFF):
        e = raises(spi.BlockError, spi.decode_block, bytes([fill]) * 64, spi.MAGIC_BOARD)
        assert e.reason == "idle", e.reason
    host_block = spi.encode_block(64, spi.MAGIC_HOST, 0, 5, 0, 0, 0)
    assert raises(spi.BlockError, spi.decode_block, host_block, spi.MAGIC_BOARD).reason == "bad_magic"
    assert raises(spi.BlockError, spi.decode_block, b"\xa5" * 10, spi.MAGIC_BOARD).reason == "short"
    raises(ValueError, spi.check_size, 66)
    raises(ValueError, spi.check_size, 8192)


def run_link(host, board, steps, rng=None, p_flip=0, p_idle=0, host_data=b"", board_data=b""):
    """Drive both endpoints through `steps` transactions. The board's block for transaction t
    is built (armed) before the host's, as the PIO's DMA is loaded before CS falls. Faults: a
    byte of either block flipped with probability p_flip; the board not armed (the host reads
    0x00, its block is lost) with probability p_idle. Returns the bytes each side received."""
    got_h, got_b = bytearray(), bytearray()
    host.send(host_data)
    board.send(board_data)
    armed = board.next_block()
    for _ in range(steps):
        mosi = bytearray(host.next_block())
        if rng and rng.below(1000) < p_idle:
            got_h += host.on_block(bytes(len(mosi)))        # unarmed: idle line, MOSI lost
            continue
        miso = bytearray(armed)
        if rng and rng.below(1000) < p_flip:
            mosi[rng.below(len(mosi))] ^= 1 << rng.below(8)
        if rng and rng.below(1000) < p_flip:
            miso[rng.below(len(miso))] ^= 1 << rng.below(8)
        got_h += host.on_block(miso)
        got_b += board.on_block(mosi)
        armed = board.next_block()
    return bytes(got_h), bytes(got_b)


def pattern(n, salt):
    return bytes((i * 7 + salt + (i >> 8)) & 0xFF for i in range(n))


def test_clean_link_carries_both_directions_in_order():
    host = spi.Endpoint(128, False, 0x1111)
    board = spi.Endpoint(128, True, 0x2222)
    up, down = pattern(3000, 1), pattern(2500, 2)
    got_h, got_b = run_link(host, board, 80, host_data=up, board_data=down)
    assert got_b == up and got_h == down, (len(got_b), len(got_h))
    assert not host.pending() and not board.pending()
    assert host.counters["go_back"] == 0 and board.counters["bad_crc"] == 0, (host.counters, board.counters)


def test_lossy_link_is_exactly_once_and_in_order():
    rng = Lcg(7)
    host = spi.Endpoint(96, False, 0x0101)
    board = spi.Endpoint(96, True, 0x0202)
    up, down = pattern(4000, 3), pattern(4000, 4)
    got_h, got_b = run_link(host, board, 900, rng, p_flip=100, p_idle=50, host_data=up, board_data=down)
    assert got_b == up, (len(got_b), len(up))
    assert got_h == down, (len(got_h), len(down))
    c = host.counters
    assert c["bad_crc"] + c["bad_magic"] > 20 and c["idle"] > 10, c
    assert board.counters["bad_crc"] + board.counters["bad_magic"] > 20, board.counters
    assert c["go_back"] > 0 and board.counters["go_back"] > 0, (c, board.counters)


def test_peer_restart_starts_a_new_stream_and_stale_acks_are_ignored():
    host = spi.Endpoint(64, False, 0x0A0A)
    board = spi.Endpoint(64, True, 0x0B0B)
    run_link(host, board, 10, host_data=b"x" * 200, board_data=b"y" * 200)
    assert host.rx_expected != 0 and board.rx_expected != 0
    # the board resets: a new endpoint (new epoch) whose first payload is its boot HELLO
    board = spi.Endpoint(64, True, 0x0C0C)
    got_h, got_b = run_link(host, board, 12, host_data=b"after", board_data=b"HELLO")
    assert got_h == b"HELLO", got_h        # not swallowed by an ack meant for the old board
    assert got_b == b"after", got_b
    assert host.counters["peer_restarts"] == 1, host.counters


def test_board_with_nothing_to_say_sends_ack_only_blocks():
    host = spi.Endpoint(64, False, 3)
    board = spi.Endpoint(64, True, 4)
    blk = board.next_block()
    flags, epoch, ack_epoch, seq, ack, payload = spi.decode_block(blk, spi.MAGIC_BOARD)
    assert (flags, epoch, ack_epoch, payload) == (0, 4, 0, b""), (flags, epoch, ack_epoch)
    assert not board.pending()
    board.send(b"z")
    assert board.pending()
    assert host.on_block(board.next_block()) == b"z"
    assert board.pending()          # until the host's ack arrives


def test_send_queue_is_bounded_like_a_uart():
    ep = spi.Endpoint(64, True, 9, max_queue=100)
    ep.send(b"a" * 80)
    ep.send(b"b" * 80)
    assert ep.queued() == 100 and ep.counters["overflow_bytes"] == 60, ep.counters


def test_queue_drains_in_order_through_its_compaction_into_one_armed_buffer():
    """The board's send queue is taken from the front in O(1) (compacted as it goes) and each
    block is written into the one buffer the port arms (stale bytes of the last block zeroed):
    the host gets every byte once, in order."""
    board = spi.Endpoint(64, True, 4, max_queue=5000)
    host = spi.Endpoint(64, False, 3)
    armed = bytearray(b"\xee" * 64)
    data = bytes((i * 7) & 255 for i in range(3000))
    got = bytearray()
    sent = 0
    for t in range(400):
        if sent < len(data) and t % 3 == 0:
            board.send(data[sent:sent + 97])
            sent += 97
        board.next_block(armed)
        assert bytes(armed) == bytes(spi.encode_block(64, *_fields(armed))), t
        got += host.on_block(armed)
        board.on_block(host.next_block())
    assert bytes(got) == data and not board.pending(), (len(got), board.counters)
    assert board.counters["overflow_bytes"] == 0


def _fields(block):
    """encode_block's arguments back from a board block (to rebuild it fresh)."""
    flags, epoch, ack_epoch, seq, ack, payload = spi.decode_block(block, spi.MAGIC_BOARD)
    return spi.MAGIC_BOARD, flags, epoch, ack_epoch, seq, ack, payload
