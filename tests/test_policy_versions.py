"""The policy API as asyncio has it on each Python version.

Python 3.14 deprecated asyncio's event loop policies (removal in 3.16): looking up
``asyncio.DefaultEventLoopPolicy`` and calling ``asyncio.set_event_loop_policy()`` warn.
``greenhub.Policy`` follows: it warns when looked up on 3.14+, as asyncio's own class
does, and never at ``import greenhub``; ``greenhub.install()``, ``greenhub.run()`` and
the loop-factory paths are warning-free on every version.  Each check runs in a fresh
interpreter with warnings turned into errors, so that nothing imported earlier hides a
warning.
"""

import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEPRECATED = sys.version_info >= (3, 14)


def run_clean(code):
    """Runs `code` in a new interpreter with -W error; returns (returncode, output)."""
    env = dict(os.environ)
    if not os.environ.get("GREENHUB_TEST_INSTALLED"):
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=50,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_import_does_not_warn():
    rc, out = run_clean(
        """
        import greenhub
        from greenhub import *
        import greenhub.vthread, greenhub.sync, greenhub.monkey, greenhub.socket
        print("ok")
        """
    )
    assert rc == 0 and out.strip() == "ok", out


@pytest.mark.parametrize(
    "how",
    [
        "greenhub.run(main())",
        "with asyncio.Runner(loop_factory=greenhub.new_event_loop) as r: r.run(main())",
        "lp = greenhub.new_event_loop(); lp.run_until_complete(main()); lp.close()",
        "greenhub.install(); asyncio.run(main())",
        "greenhub.install(); lp = asyncio.new_event_loop(); lp.run_until_complete(main()); "
        "lp.close()",
    ],
)
def test_documented_paths_do_not_warn(how):
    rc, out = run_clean(
        f"""
        import asyncio, greenhub

        async def main():
            loop = asyncio.get_running_loop()
            assert isinstance(loop, greenhub.Loop), type(loop)
            print("on greenhub")

        {how}
        """
    )
    assert rc == 0 and out.strip() == "on greenhub", out


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is 3.12+")
def test_asyncio_run_with_the_loop_factory_does_not_warn():
    rc, out = run_clean(
        """
        import asyncio, greenhub

        async def main():
            return type(asyncio.get_running_loop()).__name__

        print(asyncio.run(main(), loop_factory=greenhub.new_event_loop))
        """
    )
    assert rc == 0 and out.strip() == "Loop", out


def test_install_makes_later_loops_greenhub_loops():
    rc, out = run_clean(
        """
        import asyncio, threading, greenhub

        greenhub.install()
        loops = [asyncio.new_event_loop()]
        threading.Thread(target=lambda: loops.append(asyncio.new_event_loop())).start()
        while len(loops) < 2:
            pass
        print(all(isinstance(lp, greenhub.Loop) for lp in loops))
        for lp in loops:
            lp.close()
        """
    )
    assert rc == 0 and out.strip() == "True", out


def test_policy_warns_as_asyncios_own_class_does():
    """On 3.14+ both lookups warn, with messages of one form and at the caller's line;
    before 3.14 neither does."""
    rc, out = run_clean(
        """
        import asyncio, warnings, greenhub

        seen = {}
        for name, get in [("asyncio", lambda: asyncio.DefaultEventLoopPolicy),
                          ("greenhub", lambda: greenhub.Policy)]:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                cls = get()
            seen[name] = [(x.category.__name__, str(x.message), x.filename) for x in w]
            assert isinstance(cls, type)
        print(repr(seen))
        """
    )
    assert rc == 0, out
    seen = eval(out)  # noqa: S307 - our own child's repr()
    if not DEPRECATED:
        assert seen == {"asyncio": [], "greenhub": []}
        return
    [(cat_a, msg_a, file_a)] = seen["asyncio"]
    [(cat_g, msg_g, file_g)] = seen["greenhub"]
    assert cat_a == cat_g == "DeprecationWarning"
    assert msg_a == "'asyncio.DefaultEventLoopPolicy' is deprecated and slated for removal in Python 3.16"
    assert msg_g == "'greenhub.Policy' is deprecated and slated for removal in Python 3.16"
    assert file_a == file_g == "<string>"  # both point at the line that looked them up


def test_policy_still_works_where_asyncio_has_policies():
    rc, out = run_clean(
        """
        import asyncio, warnings, greenhub

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            policy = greenhub.Policy()
            stock = asyncio.DefaultEventLoopPolicy
            asyncio.set_event_loop_policy(policy)
            assert isinstance(policy, stock)
            assert asyncio.get_event_loop_policy() is policy
        loop = asyncio.new_event_loop()
        print(type(loop).__module__, type(loop).__name__, repr(policy))
        loop.close()
        """
    )
    assert rc == 0 and out.split() == ["greenhub", "Loop", "<greenhub.Policy>"], out


def test_policy_is_not_in_star_import_where_deprecated():
    import greenhub

    assert ("Policy" in greenhub.__all__) is not DEPRECATED
