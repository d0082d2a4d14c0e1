"""A chat server written as a gevent program would be, on greenhub's virtual threads.

The pieces are gevent's, under greenhub's names: ``greenhub.server.StreamServer``
runs ``handle(sock, address)`` in a virtual thread per connection (at most
MAX_USERS at once), ``with greenhub.timeout(IDLE):`` disconnects users who stay
silent, and ``greenhub.Pool`` runs the demo's bots.  Everything is plain blocking
code: a green socket's ``makefile()``, a ``greenhub.Queue`` per user.

    python examples/chat_server.py           # a demo: bots chat, one idles out
    python examples/chat_server.py --serve   # serve on 127.0.0.1:8023 (try: nc 127.0.0.1 8023)
"""

import queue
import sys

import greenhub
import greenhub.socket as gsocket
from greenhub.server import StreamServer

MAX_USERS = 100
IDLE = 60.0  # seconds of silence before a user is disconnected (the demo uses less)


class Room:
    """Who is here, and a queue of lines to send to each of them."""

    def __init__(self):
        self.inboxes = {}
        self.changed = greenhub.Condition()

    def join(self, name):
        with self.changed:
            inbox = self.inboxes[name] = greenhub.Queue(100)
            self.changed.notify_all()
        return inbox

    def leave(self, name):
        with self.changed:
            self.inboxes.pop(name, None)
            self.changed.notify_all()

    def say(self, sender, text):
        for name, inbox in list(self.inboxes.items()):
            if name != sender:
                try:
                    inbox.put_nowait(f"{sender}: {text}\n")
                except queue.Full:
                    pass  # a reader that fell behind loses lines; the room does not stall

    def wait_for(self, count):
        with self.changed:
            self.changed.wait_for(lambda: len(self.inboxes) >= count)


def forward(inbox, sock):
    """A user's sender (its own virtual thread): the room's lines to the socket."""
    while True:
        sock.sendall(inbox.get().encode())


def make_handler(room, idle):
    def handle(sock, address):
        with sock.makefile("rb") as lines:
            sock.sendall(b"name? ")
            try:
                with greenhub.timeout(idle):
                    name = lines.readline().decode().strip()
            except TimeoutError:
                return
            if not name:
                return
            sender = greenhub.spawn(forward, room.join(name), sock)
            try:
                while True:
                    with greenhub.timeout(idle):
                        line = lines.readline()
                    if not line:
                        break
                    room.say(name, line.decode().strip())
            except TimeoutError:
                sock.sendall(b"* idle too long, bye\n")
            finally:
                room.leave(name)
                sender.cancel()

    return handle


# --------------------------------------------------------------------------
# the demo


def bot(address, name, room, bots, lines_each):
    """Joins, waits for the others, says its lines, reads everyone else's."""
    with gsocket.create_connection(address) as sock, sock.makefile("rb") as answers:
        answers.read(len(b"name? "))
        sock.sendall(f"{name}\n".encode())
        room.wait_for(bots)
        for n in range(lines_each):
            sock.sendall(f"line {n} from {name}\n".encode())
        return [answers.readline() for _ in range((bots - 1) * lines_each)]


def idler(address, name):
    """Joins and says nothing: the server's timeout disconnects it."""
    with gsocket.create_connection(address) as sock, sock.makefile("rb") as answers:
        answers.read(len(b"name? "))
        sock.sendall(f"{name}\n".encode())
        return answers.readline().decode().strip()


def demo():
    room = Room()
    bots, lines_each = 5, 3
    with StreamServer(
        ("127.0.0.1", 0), make_handler(room, 0.5), max_connections=MAX_USERS
    ) as server:
        with greenhub.timeout(30):  # the whole demo, as gevent.Timeout would limit it
            pool = greenhub.Pool(bots)
            names = [f"bot{i}" for i in range(bots)]
            heard = pool.map(
                bot,
                [server.address] * bots,
                names,
                [room] * bots,
                [bots] * bots,
                [lines_each] * bots,
            )
            print(f"{bots} bots exchanged {sum(len(h) for h in heard)} lines")
            print(f"the idle one was told: {idler(server.address, 'sleepy')}")


def serve():
    room = Room()
    server = StreamServer(("127.0.0.1", 8023), make_handler(room, IDLE), max_connections=MAX_USERS)
    print("chat on 127.0.0.1:8023 (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
    else:
        greenhub.run(demo)
