"""Private asyncio names greenhub relies on (placeholder; see the private branch)."""

import sys
from asyncio import events, unix_events

if sys.version_info >= (3, 14):
    # The class behind the deprecated asyncio.DefaultEventLoopPolicy name, and the
    # setter behind the deprecated asyncio.set_event_loop_policy(): neither warns.
    DefaultEventLoopPolicy = unix_events._DefaultEventLoopPolicy
    set_event_loop_policy = events._set_event_loop_policy
