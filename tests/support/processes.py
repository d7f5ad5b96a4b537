"""The processes one test started, told apart from those of the test running beside it (make test runs two at
once): a command gets a tag in its environment, which every process it starts inherits."""
import os
import uuid
from pathlib import Path

TAG = "GEPA_LAB_TEST_TAG"


def tagged_env() -> tuple[str, dict[str, str]]:
    """A new tag and the environment that carries it."""
    tag = uuid.uuid4().hex
    return tag, {**os.environ, TAG: tag}


def tagged_processes(tag: str, pattern: str) -> list[str]:
    """Command lines of the live processes carrying `tag` whose command line contains `pattern`."""
    wanted = f"{TAG}={tag}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")  # empty for a zombie: it is gone
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if wanted in environ and pattern in cmdline:
            found.append(cmdline)
    return found
