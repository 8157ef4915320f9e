"""A host for firmware tests: speaks the link to a board core in-process (sans-I/O), encodes
requests, and sorts what comes back into replies and events. Runs on both runtimes. With `key`
the link is authenticated as the host's link client does it (firmware/link/auth.py); `sent` keeps
every frame put on the wire (an attacker's recording)."""
from firmware.link import auth as la
from firmware.link import frame as fr
from firmware.link import messages as m


class LinkHost:
    def __init__(self, board, now=0, key=None):
        self.board = board
        self.now = now
        self.seq = 0
        self.auth = la.HostAuth(key) if key else None
        self.dec = fr.FrameDecoder(65535, auth=key is not None)
        self.nonce = None
        self.events = []
        self.sent = []
        self.collect(board.tick(now))

    def collect(self, data):
        """Decode board output: events are kept, replies returned."""
        replies = []
        for f in self.dec.feed(data):
            if self.auth is not None:
                hello_reply = f.type == m.HELLO and f.flags & fr.FLAG_REPLY
                f = self.auth.open(f, self.nonce if hello_reply else None)
                if f is None:
                    continue
                if hello_reply:
                    self.nonce = None        # answered: a second reply to it is a replay's
            if f.flags & fr.FLAG_EVENT:
                self.events.append(f)
            else:
                replies.append(f)
        return replies

    def frame(self, type, body=b"", seq=None, flags=0):
        """The wire bytes of a request (sealed, on an authenticated link)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        if self.auth is None:
            wire = fr.encode(type, seq, flags, body)
        else:
            if type == m.HELLO:
                self.nonce = self.auth.new_nonce()
                body = bytes(body) + self.nonce
            elif type == m.SA_ADD:
                flags |= fr.FLAG_ENC
            wire = self.auth.seal(type, seq, flags, body)
        self.sent.append(wire)
        return wire

    def feed(self, wire):
        """Raw bytes to the board (what an attacker on the wire can do); returns the replies."""
        return self.collect(self.board.feed(wire, self.now))

    def send(self, type, body=b"", seq=None, flags=0):
        return self.feed(self.frame(type, body, seq, flags))

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
