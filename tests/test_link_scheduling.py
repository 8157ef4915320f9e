"""Control before data in the host's link client (host/offload/link.py): data in flight bounded
by its budget of link-or-board time, heartbeats and SA commands never behind it, and the pump
independent of the queue's length."""
from firmware.link import frame as fr
from firmware.link import messages as m
from host.offload.link import LinkClient

BYTE = 10 / 921600          # a UART at 921600 baud
NO_BQL = float("inf")               # line_ahead for tests of the budget alone: every frame it allows is written


def frames(data):
    return fr.FrameDecoder(65535).feed(data)


def data_request(link, now, n=1, size=1400, work=0.004):
    body = m.encode_encrypt_request([(0x1000, bytes(size))] * n)
    return link.request(m.ENCRYPT, body, now, retry=False, deadline=now + 2, reply_len=n * (size + 70),
                        work=n * work, step=work)


def test_data_in_flight_stays_within_the_budget_and_control_passes_it():
    link = LinkClient(byte_time=BYTE, data_budget=0.05, line_ahead=NO_BQL)
    seqs = [data_request(link, 0.0) for _ in range(10)]
    sent = frames(link.data_to_send())
    # one 1400-byte packet holds ~15.9 ms of wire and 4 ms of crypto, which overlap (the board works
    # on one frame while the next is on the wire): the longer counts, three fit 50 ms, four do not
    assert [f.seq for f in sent] == seqs[:3]
    assert link.data_room() == 0.0
    n, cost, step = link.data_in_flight()
    assert n == 3 and 0.045 < cost <= 0.05 and step == 0.004
    hb = link.request(m.HEARTBEAT, b"", 0.0, idempotent=True, deadline=0.2)
    add = link.request(m.SA_ADD, b"x", 0.0)
    assert [f.seq for f in frames(link.data_to_send())] == [hb, add]     # not behind the 8 waiting
    # a reply frees budget: the next data request leaves
    link.receive(fr.encode(m.ENCRYPT, seqs[0], fr.FLAG_REPLY | fr.FLAG_NOCACHE, b"\x00\x00\x00"), 0.03)
    assert [f.seq for f in frames(link.data_to_send())] == [seqs[3]]


def test_one_data_request_is_always_allowed_even_over_budget():
    link = LinkClient(byte_time=BYTE, data_budget=0.001, line_ahead=NO_BQL)
    a, b = data_request(link, 0.0, n=8), data_request(link, 0.0)
    assert [f.seq for f in frames(link.data_to_send())] == [a]
    assert link.data_in_flight()[0] == 1 and link.data_room() == 0.0
    link.receive(fr.encode(m.ENCRYPT, a, fr.FLAG_REPLY | fr.FLAG_NOCACHE, b"\x00\x00\x00"), 0.1)
    assert [f.seq for f in frames(link.data_to_send())] == [b]


def test_a_rateless_link_is_bounded_by_frames_and_bytes():
    link = LinkClient(byte_time=0.0, data_budget=0.05, data_frames=4, data_bytes=1 << 20)
    for _ in range(6):
        data_request(link, 0.0, work=0.0)
    assert len(frames(link.data_to_send())) == 4
    link = LinkClient(byte_time=0.0, data_budget=0.05, data_frames=64, data_bytes=5000)
    for _ in range(6):
        data_request(link, 0.0, work=0.0)
    assert len(frames(link.data_to_send())) == 3       # 3 x ~1.43 KB on the wire; a 4th passes 5000 bytes


def test_failures_and_cancels_give_the_budget_back():
    link = LinkClient(byte_time=BYTE, data_budget=0.05, line_ahead=NO_BQL)
    a, b, c, d = (data_request(link, 0.0) for _ in range(4))
    assert [f.seq for f in frames(link.data_to_send())] == [a, b, c]
    link.cancel(a)
    link.handle_timer(0.01)                                         # nothing due; the pump runs
    assert [f.seq for f in frames(link.data_to_send())] == [d]
    assert link.data_in_flight()[0] == 3
    link.handle_timer(2.5)                                          # b's, c's and d's deadlines passed
    failed = set()
    while (e := link.next_event()) is not None:
        failed.add(e.seq)
    assert failed == {b, c, d}
    assert link.data_in_flight() == (0, 0.0, 0.0) and link.data_room() == 0.05
    d = data_request(link, 3.0)
    link.fail_all("lost", 3.0)
    assert link.data_in_flight() == (0, 0.0, 0.0) and link.next_event().seq == d


def test_cached_requests_keep_order_and_the_window_while_heartbeats_pass():
    link = LinkClient(window=2, cache_size=8)
    adds = [link.request(m.SA_ADD, b"%d" % i, 0.0) for i in range(5)]
    assert [f.seq for f in frames(link.data_to_send())] == adds[:2]
    hb = link.request(m.HEARTBEAT, b"", 0.0, idempotent=True, deadline=0.2)
    assert [f.seq for f in frames(link.data_to_send())] == [hb]
    link.receive(fr.encode(m.SA_ADD, adds[0], fr.FLAG_REPLY, b"\x00" * 7), 0.01)
    assert [f.seq for f in frames(link.data_to_send())] == [adds[2]]


def test_the_pump_does_not_walk_the_queue():
    """10,000 waiting data requests: sending the next one after a reply touches only it."""
    import time
    link = LinkClient(byte_time=BYTE, data_budget=0.02, line_ahead=NO_BQL)
    seqs = [data_request(link, 0.0) for _ in range(10000)]
    link.data_to_send()
    t0 = time.perf_counter()
    for i in range(200):
        link.receive(fr.encode(m.ENCRYPT, seqs[i], fr.FLAG_REPLY | fr.FLAG_NOCACHE, b"\x00\x00\x00"), 0.01 * i)
    per_reply = (time.perf_counter() - t0) / 200
    assert link.counters["data_sent"] == 201
    # a walk of the 10,000 waiting requests per call costs milliseconds; a deque pop microseconds
    assert per_reply < 0.002, per_reply


def _hung_with_data(in_flight):
    """A ready session on a 921600-baud wire whose board then hangs, with `in_flight` data
    requests of one 1400-byte packet outstanding; returns (wire, time of the next heartbeat)."""
    from tests.board_wire import Wire
    from host.offload.session import READY

    w = Wire(period=0.2, misses=3, byte_time=BYTE, link=LinkClient(byte_time=BYTE, data_budget=0.05, line_ahead=NO_BQL))
    w.run_until(lambda: w.session.state == READY)
    w.run(0.05)
    w.board_hung = True
    body = m.encode_encrypt_request([(0x1000, bytes(1400))])
    for _ in range(in_flight):
        w.session.request(m.ENCRYPT, body, w.now, retry=False, deadline=w.now + 5, reply_len=1470, work=0.004)
    w.pump()
    return w, w.session.next_heartbeat


def test_a_heartbeat_allows_for_the_data_in_flight_ahead_of_it():
    idle, t_idle = _hung_with_data(0)
    busy, t_busy = _hung_with_data(2)
    slack_idle = idle.session.heartbeat_slack()
    slack_busy = busy.session.heartbeat_slack()
    _, cost, step = busy.session.link.data_in_flight()
    assert slack_idle == idle.session.slack_base > 0                # one reply frame on the line
    assert abs(slack_busy - (slack_idle + cost + step)) < 1e-9 and cost > 0.03
    # the first heartbeat after the hang is a miss only once its slack has passed, not at `period`
    for w, t, slack in ((idle, t_idle, slack_idle), (busy, t_busy, slack_busy)):
        w.run(t + 0.2 + slack - 0.002 - w.now)
        assert w.session.missed == 0
        w.run(0.004)
        assert w.session.missed == 1


def test_the_frames_in_flight_always_fit_the_boards_data_queue():
    """The board queues `data_queue` data frames (small ones: SMALL_QUEUE more) and refuses the
    rest with BUSY, their packets lost (firmware/board.py): the host, with the window its client
    gives a board (host/offload/client.py), never sends a frame that the board would refuse, urgent
    frames of small packets and bulk ones mixed, whatever the board's pace."""
    from firmware.board import DEFAULT_PROFILE, SMALL_FRAME, SMALL_QUEUE
    from host.offload.client import BoardClient
    dq = DEFAULT_PROFILE["data_queue"]
    opts = BoardClient("b", "socket://127.0.0.1:1", profile=profiles_sim(), link_key=b"k" * 32).link_options
    link = LinkClient(byte_time=0.0, data_budget=opts["data_budget"], data_frames=opts["data_frames"],
                      urgent_frames=opts["urgent_frames"])
    queued = []                               # the board's data queue: (seq, small)
    answered = 0
    for _ in range(40):
        link.request(m.ENCRYPT, m.encode_encrypt_request([(0x1000, bytes(60))] * 4), 0.0, retry=False,
                     deadline=100, reply_len=400, work=0.0, urgent=True)
        data_request(link, 0.0, n=4, work=0.0)
    for turn in range(200):
        for f in frames(link.data_to_send()):
            small = len(f.body) <= SMALL_FRAME
            assert len(queued) < dq + (SMALL_QUEUE if small else 0), "the board would answer BUSY"
            queued.append(f.seq)
        if queued and turn % 3:               # the board works on one frame now and then
            seq = queued.pop(0)
            link.receive(fr.encode(m.ENCRYPT, seq, fr.FLAG_REPLY | fr.FLAG_NOCACHE, b"\x00\x00\x00"), 0.01)
            answered += 1
    assert answered == 80 and not queued


def profiles_sim():
    from firmware import profiles
    return profiles.load("sim")


def test_bulk_frames_wait_in_the_client_not_in_the_ports_buffer():
    """Bytes written to the port leave in order: a bulk frame is written only when the line will
    have sent what is ahead of it within `line_ahead`, so a heartbeat or an urgent frame made
    meanwhile waits behind at most that much and the one frame on the line, however much data
    the budget allows. The client's timer writes the next bulk frame when the line has room."""
    link = LinkClient(byte_time=BYTE, data_budget=0.2, line_ahead=0.005)
    seqs = [data_request(link, 0.0) for _ in range(6)]
    first = link.data_to_send()
    assert [f.seq for f in frames(first)] == seqs[:1]
    frame_time = len(first) * BYTE                   # one 1400-byte packet's request on the wire
    assert link.data_room() == 0.0                   # the data path keeps the next batch meanwhile
    t = link.get_timer()
    assert abs(t - (frame_time - 0.005)) < 0.001
    hb = link.request(m.HEARTBEAT, b"", 0.001, idempotent=True, deadline=0.2)
    urgent = link.request(m.ENCRYPT, m.encode_encrypt_request([(0x1000, bytes(60))]), 0.001, retry=False,
                          deadline=2, reply_len=140, urgent=True)
    assert [f.seq for f in frames(link.data_to_send())] == [hb, urgent]     # not behind 5 bulk frames
    t = link.get_timer()                             # the line has those two to send as well
    link.handle_timer(t - 0.002)
    assert link.data_to_send() == b""                # it still has more than 5 ms to send
    written = 1
    while written < 6:
        link.handle_timer(t)
        sent = frames(link.data_to_send())
        assert len(sent) == 1 and sent[0].seq == seqs[written]
        written += 1
        # the next one is written as this one's last 5 ms leave: the line never runs dry between
        t, last = link.get_timer(), t
        assert written == 6 or abs(t - last - frame_time) < 0.0005
