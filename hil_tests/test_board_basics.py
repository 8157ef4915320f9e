"""HELLO, capabilities and SA bookkeeping over the real link."""

import pytest

from firmware import profiles
from firmware.link import messages as m
from hil_tests.conftest import heartbeats_acked
from host.offload.client import LinkError


def spec(spi, d=m.DIR_IN):
    return m.SaSpec(spi, d, m.ENCR_AES_GCM_16, b"k" * 20, reqid=spi & 0xFFFF)


def test_hello_reports_the_profile(bench, make_client, run):
    async def main():
        c = await make_client()
        h = c.session.hello
        b = bench.profile["board"]
        assert h.board_id == b["name"]
        assert (h.max_sas, h.max_frame, h.max_batch) == (b["max_sas"], b["max_frame"], b["max_batch"])
        assert h.host_silence_ms == b["host_silence_ms"]
        assert len(h.boot_id) == 8 and h.fw_version and h.reply_cache >= 2
        # every transform the board advertises names its backend, and what it calls fast is what
        # its profile says its crypto backend makes fast (the host proposes from this list)
        assert h.transforms, "the board advertises no transform: no Child SA could ever be placed on it"
        assert all(t.backend for t in h.transforms)
        fast = {t.key() for t in h.transforms if t.speed >= m.SPEED_FAST}
        assert fast == profiles.fast_transforms(bench.profile), (fast, bench.profile["crypto"])
    run(main())


def test_sa_add_del_flush_bookkeeping(bench, make_client, run):
    async def main():
        c = await make_client()
        for i in range(20):
            r = await c.sa_add(spec(0x1000 + i, i % 2))
            assert r.sa_count == i + 1
        with pytest.raises(LinkError) as e:
            await c.sa_add(spec(0x1000))
        assert e.value.status == m.EXISTS
        r = await c.sa_del(0x1001, 1)
        assert r.sa_count == 19
        with pytest.raises(LinkError) as e:
            await c.sa_del(0x9999, 0)
        assert e.value.status == m.NOT_FOUND
        stats = await c.stats()
        assert sorted((s.spi, s.direction) for s in stats) == sorted(c.session.books.sas)
        assert {s.reqid for s in stats if s.spi == 0x1005} == {0x1005}
        await heartbeats_acked(c, 2)                # heartbeats compare the books: all agree
        assert c.ready and not c.lost
        r = await c.sa_flush()
        assert (r.sa_count, r.removed) == (0, 19) and not c.session.books.sas
        assert await c.stats() == []
    run(main())


def test_sad_full_is_refused_cleanly(bench, make_client, run):
    async def main():
        c = await make_client()
        n = c.session.hello.max_sas
        for i in range(n):
            await c.sa_add(spec(0x10000 + i))
        with pytest.raises(LinkError) as e:
            await c.sa_add(spec(0x20000))
        assert e.value.status == m.SAD_FULL
        counters = await c.counters()
        assert counters["sa_count"] == n
        await heartbeats_acked(c, 2)
        assert c.ready and not c.lost
    run(main())


def test_a_new_host_session_flushes_the_board(bench, make_client, run):
    async def main():
        c1 = await make_client()
        await c1.sa_add(spec(0x3000))
        await c1.close()
        c2 = await make_client()             # the daemon restarting: board flushed first
        assert await c2.stats() == []
        assert (await c2.counters())["sa_count"] == 0
    run(main())
