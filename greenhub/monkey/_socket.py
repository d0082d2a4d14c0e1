"""The blocking name lookups in a virtual thread (getaddrinfo & co.), and what
patch_socket() and patch_ssl() put in socket and ssl (greenhub.socket, greenhub.ssl).

Each replacement dispatches: inside a virtual thread it waits cooperatively,
anywhere else it is the original (see greenhub/monkey/__init__.py).
"""

import functools

from .._resolve import _is_ip_literal, _is_numeric_port
from ._common import _await, _in_vthread, _running_loop, _wraps

# Blocking name lookups.  In a virtual thread they run in the loop's default
# executor (the loop goes on meanwhile), except when there is nothing to look
# up (an IP literal and a numeric port): then the original answers at once.
# greenhub's own resolver calls socket.getaddrinfo for those from inside task
# steps, so the literal check is also what keeps the two from calling each
# other forever.
_RESOLVERS = ("getaddrinfo", "getnameinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr")


def _needs_lookup(name, args, kwargs):
    if name == "getaddrinfo":
        host = args[0] if args else kwargs.get("host")
        port = args[1] if len(args) > 1 else kwargs.get("port")
        return not (_is_ip_literal(host) and _is_numeric_port(port))
    if name == "getnameinfo":
        import socket

        flags = args[1] if len(args) > 1 else 0
        numeric = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
        return not (isinstance(flags, int) and flags & numeric == numeric)
    if name == "gethostbyname":
        return not (args and _is_ip_literal(args[0]) and args[0] is not None)
    return True


def _make_resolver(name, original):
    def resolver(*args, **kwargs):
        if not _in_vthread() or not _needs_lookup(name, args, kwargs):
            return original(*args, **kwargs)
        loop = _running_loop()
        return _await(loop.run_in_executor(None, functools.partial(original, *args, **kwargs)))

    return _wraps(original, resolver)


def _plan_socket(batch):
    import socket

    from .. import socket as green

    batch.add("socket", socket, "socket", green.socket, ("socket",))
    for name in _RESOLVERS:
        batch.add(
            "socket",
            socket,
            name,
            _make_resolver(name, getattr(socket, name)),
            ("socket", "_socket"),
        )


def _plan_ssl(batch):
    import ssl

    from .. import ssl as green

    # In place on the class: contexts made before patching (a library's
    # module-level context) wrap into green SSL sockets too.
    batch.add("ssl", ssl.SSLContext, "sslsocket_class", green.SSLSocket, ("ssl",))
