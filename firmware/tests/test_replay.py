"""Anti-replay window and ESN inference (RFC 4303 §3.4.3, Appendix A)."""
from firmware.replay import ReplayWindow


def _accept(w, seq):
    if not w.check(seq):
        return False
    w.update(seq)
    return True


def test_duplicates_rejected_and_order_inside_window_accepted():
    w = ReplayWindow(64)
    assert _accept(w, 1)
    assert not _accept(w, 1)
    assert _accept(w, 5)
    assert _accept(w, 3)        # late but inside the window
    assert _accept(w, 2)
    assert not _accept(w, 3)    # and only once
    assert _accept(w, 4)
    assert w.top == 5


def test_left_of_window():
    w = ReplayWindow(64)
    assert _accept(w, 100)
    assert not w.check(36)      # 100 - 36 = 64: just outside
    assert w.check(37)          # the oldest the window still holds
    w = ReplayWindow(1024)
    assert _accept(w, 2000)
    assert w.check(977) and not w.check(976)


def test_jump_beyond_window_forgets_old_bits():
    w = ReplayWindow(64)
    for s in (1, 2, 3):
        assert _accept(w, s)
    assert _accept(w, 1000)
    assert not w.check(3)       # left of the window now
    assert _accept(w, 999)
    assert not _accept(w, 999)


def test_check_does_not_change_state():
    w = ReplayWindow(64)
    assert w.check(10) and w.check(10)
    assert w.top == 0
    w.update(10)
    assert not w.check(10)


def test_sequence_number_zero_is_never_valid():
    for size in (0, 64):
        w = ReplayWindow(size)
        assert not w.check(0)


def test_window_zero_disables_the_check():
    w = ReplayWindow(0)
    assert _accept(w, 5)
    assert _accept(w, 5)
    assert _accept(w, 1)


def test_window_size_bounds():
    for bad in (-1, 1025):
        try:
            ReplayWindow(bad)
            raise AssertionError(bad)
        except ValueError:
            pass


def test_esn_case_a_same_and_next_subspace():
    w = ReplayWindow(64, esn=True)
    w.update((3 << 32) | 1000)
    assert w.infer(1000 - 63) == (3 << 32) | (1000 - 63)    # inside: Th
    assert w.infer(5000) == (3 << 32) | 5000                 # ahead: Th
    assert w.infer(10) == (4 << 32) | 10                     # below the window: next subspace


def test_esn_case_b_window_spans_two_subspaces():
    w = ReplayWindow(64, esn=True)
    w.update((3 << 32) | 10)
    assert w.infer(0xFFFFFFF0) == (2 << 32) | 0xFFFFFFF0     # left part of the window: Th - 1
    assert w.infer(20) == (3 << 32) | 20                     # right part: Th
    assert w.infer(0x80000000) == (3 << 32) | 0x80000000


def test_esn_wrap_through_2_32():
    w = ReplayWindow(64, esn=True)
    assert w.infer(0xFFFFFFFE) == -1      # a fresh SA: that would be before sequence number 0
    w.update(0xFFFFFFF0)
    assert _accept(w, w.infer(0xFFFFFFFE))
    assert _accept(w, w.infer(0xFFFFFFFF))
    s = w.infer(0)
    assert s == 1 << 32 and _accept(w, s)
    s = w.infer(0xFFFFFFFF)                                  # a duplicate from before the wrap
    assert s == 0xFFFFFFFF and not _accept(w, s)


def test_esn_before_sequence_zero_is_invalid():
    w = ReplayWindow(64, esn=True)
    w.update(5)
    assert w.infer(0xFFFFFFF0) == -1
    assert not w.check(-1)
