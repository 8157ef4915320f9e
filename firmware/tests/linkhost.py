"""A host for firmware tests: speaks the link to a board core in-process (sans-I/O), encodes
requests, and sorts what comes back into replies and events. Runs on both runtimes."""
from firmware.link import frame as fr


class LinkHost:
    def __init__(self, board, now=0):
        self.board = board
        self.now = now
        self.seq = 0
        self.dec = fr.FrameDecoder(65535)
        self.events = []
        self.collect(board.tick(now))

    def collect(self, data):
        """Decode board output: events are kept, replies returned."""
        replies = []
        for f in self.dec.feed(data):
            if f.flags & fr.FLAG_EVENT:
                self.events.append(f)
            else:
                replies.append(f)
        return replies

    def send(self, type, body=b"", seq=None, flags=0):
        if seq is None:
            self.seq += 1
            seq = self.seq
        return self.collect(self.board.feed(fr.encode(type, seq, flags, body), self.now))

    def call(self, type, body=b"", seq=None, flags=0):
        """One request, exactly one reply (of the same type): its body."""
        replies = self.send(type, body, seq, flags)
        assert len(replies) == 1, replies
        assert replies[0].flags & fr.FLAG_REPLY and replies[0].type == type, replies[0]
        return replies[0].body

    def tick(self, dt=0):
        self.now += dt
        self.collect(self.board.tick(self.now))

    def events_of(self, type):
        return [f for f in self.events if f.type == type]
