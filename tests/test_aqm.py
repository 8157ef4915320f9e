"""The queue in front of a board (host/dataplane/aqm.py): CoDel (RFC 8289) drops only when the
sojourn time stays above target for an interval, then faster; tail drop beyond max_delay of
work; the two directions take turns; batches fit the link's room."""
from host.dataplane.aqm import IN, OUT, BoardQueue, CoDel, Item, QueueLimits


def item(kind=OUT, at=0.0, size=1400, cost=0.02):
    return Item(kind, None, bytes(size), None, 0.0, cost, at)




def test_no_drops_while_the_sojourn_time_stays_below_target():
    q = CoDel(target=0.03, interval=0.3)
    for i in range(100):
        q.push(item(at=i * 0.02))
        assert q.pop(i * 0.02 + 0.01, lambda x: None) is not None     # 10 ms in the queue each
    assert q.dropped == 0


def test_a_standing_queue_is_dropped_at_the_head_after_one_interval_then_faster():
    q = CoDel(target=0.03, interval=0.3)
    drops = []
    t = 0.0
    # arrivals at twice the service rate: the queue and its sojourn time grow
    for _ in range(400):
        q.push(item(at=t))
        q.push(item(at=t))
        q.pop(t, lambda x, now=t: drops.append(now))
        t += 0.01
    assert drops, "a queue standing above target for more than an interval must drop"
    first = drops[0]
    assert first >= 0.3                                  # not before the first interval ran out
    gaps = [b - a for a, b in zip(drops, drops[1:]) if b > a]
    assert gaps and gaps[-1] < gaps[0]                   # the control law: drops come faster


def test_a_short_queue_is_never_dropped_whatever_its_age():
    q = CoDel(target=0.005, interval=0.1, mtu=1500)
    q.push(item(at=0.0))                                 # one MTU or less: nothing to gain
    assert q.pop(5.0, lambda x: None) is not None and q.dropped == 0


def test_tail_drop_beyond_max_delay_of_work():
    bq = BoardQueue(QueueLimits(target=0.03, interval=0.3, max_delay=0.1))
    accepted = sum(bq.push(item(cost=0.02)) for _ in range(10))
    assert accepted == 5 and bq.drops["queue_full"] == 5
    assert bq.push(item(kind=IN, cost=0.02))             # the other direction has its own budget


def test_batches_fit_the_room_and_directions_take_turns():
    bq = BoardQueue(QueueLimits(target=1.0, interval=10.0, max_delay=10.0))
    for _ in range(6):
        bq.push(item(OUT, cost=0.02))
        bq.push(item(IN, cost=0.02))
    kind1, b1 = bq.take(0.0, room=0.05, max_items=8, max_bytes=1 << 20)
    kind2, b2 = bq.take(0.0, room=0.05, max_items=8, max_bytes=1 << 20)
    assert {kind1, kind2} == {OUT, IN} and len(b1) == len(b2) == 2      # 2 x 20 ms fit 50 ms
    _, b3 = bq.take(0.0, room=0.001, max_items=8, max_bytes=1 << 20)
    assert len(b3) == 1                                  # the first always goes
    _, b4 = bq.take(0.0, room=1.0, max_items=8, max_bytes=3000)
    assert len(b4) == 2                                  # 2 x 1400 bytes, a third passes 3000


def test_limits_follow_the_boards_packet_time():
    slow = QueueLimits.for_board(0.02)                   # ~20 ms per MTU packet (921600 baud)
    fast = QueueLimits.for_board(0.0001)
    assert slow.target == 0.03 and slow.interval == 0.3 and slow.max_delay == 0.3
    assert fast.target == 0.005 and fast.interval == 0.1


def test_clear_counts_what_was_waiting():
    bq = BoardQueue()
    for _ in range(3):
        bq.push(item())
    assert bq.clear("board_lost") == 3 and bq.drops["board_lost"] == 3 and not len(bq)


def test_the_dropping_state_ends_when_the_queue_drains_or_its_delay_falls_below_target():
    """RFC 8289 §5.5: CoDel leaves the dropping state as soon as the head's sojourn time is below
    target (or the queue holds an MTU or less), and an empty queue starts over: the next
    standing queue waits a whole interval before its first drop again."""
    q = CoDel(target=0.03, interval=0.3)
    drops = []
    for _ in range(6):
        q.push(item(at=0.0))
    assert q.pop(0.1, drops.append) is not None and not q.dropping        # above target: timer set
    assert q.pop(0.5, drops.append) is not None and q.dropping and len(drops) == 1
    # the queue drains: the drops stop with it, and the state ends
    while q.pop(5.0, drops.append) is not None:
        pass
    assert len(q) == 0 and not q.dropping and q.pop(5.0, drops.append) is None
    n = len(drops)
    # a fresh standing queue: one more interval before CoDel drops again
    for _ in range(8):
        q.push(item(at=6.0))
    assert q.pop(6.1, drops.append) is not None and q.pop(6.3, drops.append) is not None
    assert len(drops) == n and not q.dropping
    assert q.pop(6.45, drops.append) is not None and len(drops) == n + 1 and q.dropping
    q.push(item(at=6.44))                                  # a packet that waited 10 ms only
    while len(q) > 1:
        q.pop(6.45, drops.append)
    assert q.pop(6.45, drops.append) is not None and not q.dropping       # below target: ends
