"""The socket transport's attributes, lifetime and garbage collection, on both loops.

greenhub keeps some of asyncio's transport attributes (_sock, _protocol, _conn_lost, _eof,
_buffer, ...) in a C state object behind descriptors (src/transport.c); asyncio's own code
and anything else that reads them must see exactly what the stock transport shows.
"""

import asyncio
import gc
import socket
import warnings
import weakref


def connect(loop, protocol_factory=asyncio.Protocol):
    a, b = socket.socketpair()

    async def make():
        return await loop.create_connection(protocol_factory, sock=a)

    transport, protocol = loop.run_until_complete(make())
    return transport, protocol, a, b


def test_attributes_through_a_connection_lifetime(loop):
    transport, protocol, a, b = connect(loop)
    try:
        assert transport._sock is a
        assert transport._protocol is protocol
        assert transport._conn_lost == 0
        assert transport._eof is False
        assert len(transport._buffer) == 0
        assert transport._empty_waiter is None
        assert transport.get_protocol() is protocol
        other = asyncio.Protocol()
        transport.set_protocol(other)
        assert transport._protocol is other and transport.get_protocol() is other
        transport.set_protocol(protocol)
        transport.write_eof()
        assert transport._eof is True
        transport.close()
        loop.run_until_complete(asyncio.sleep(0.01))
        assert transport._sock is None  # asyncio's _call_connection_lost() cleared it
        assert transport._conn_lost >= 1
        assert transport.is_closing()
    finally:
        b.close()


def test_attribute_assignment_and_deletion(loop):
    transport, _, a, b = connect(loop)
    try:
        transport._conn_lost = 7
        assert transport._conn_lost == 7
        transport._conn_lost = 0
        transport.custom = "plain attribute"
        assert transport.custom == "plain attribute"
    finally:
        transport.close()
        loop.run_until_complete(asyncio.sleep(0.01))
        b.close()


class Holder(asyncio.Protocol):
    """Keeps its transport, making the usual transport <-> protocol cycle."""

    def connection_made(self, transport):
        self.transport = transport


def test_dropped_connection_cycle_is_collected(loop):
    transport, protocol, a, b = connect(loop, Holder)
    ref = weakref.ref(transport)
    # Closed, then every reference dropped: only the cycle with the protocol remains.
    transport.close()
    loop.run_until_complete(asyncio.sleep(0.01))
    del transport, protocol
    gc.collect()
    assert ref() is None
    b.close()


def test_unclosed_transport_warns_and_is_collected(loop):
    transport, protocol, a, b = connect(loop, Holder)
    ref = weakref.ref(transport)
    loop.run_until_complete(asyncio.sleep(0))
    # Dropped while open: as on the stock loop, the loop's reader holds it until closed.
    transport.abort()
    loop.run_until_complete(asyncio.sleep(0.01))
    del transport, protocol
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    assert ref() is None
    b.close()


def test_repr_of_open_and_closed_transport(loop):
    transport, _, a, b = connect(loop)
    fd = a.fileno()
    text = repr(transport)
    assert text.startswith("<_SelectorSocketTransport fd=%d " % fd)
    transport.close()
    loop.run_until_complete(asyncio.sleep(0.01))
    assert repr(transport) == "<_SelectorSocketTransport closed fd=%d>" % fd
    b.close()
