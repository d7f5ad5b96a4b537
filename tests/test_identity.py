"""The git state a run records (gepa_lab.config.identity): the commit, whether the checkout had uncommitted
changes, and a hash of them; read from a real git checkout made here."""
import subprocess

import pytest

from gepa_lab.config.identity import decode_git_state, encode_git_state, read_git_state


def git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
    root = tmp_path / "checkout"
    root.mkdir()
    git(root, "init", "-q")
    (root / "code.py").write_text("x = 1\n")
    (root / ".gitignore").write_text("ignored/\n")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    return root


def test_a_clean_checkout_records_its_commit_and_no_diff(checkout):
    (checkout / "ignored").mkdir()
    (checkout / "ignored" / "out.txt").write_text("ignored files are not changes")
    assert read_git_state(checkout) == {"git_commit": git(checkout, "rev-parse", "HEAD"), "git_dirty": False,
                                        "git_diff_hash": None}


def test_each_uncommitted_change_gives_its_own_hash(checkout):
    hashes = set()
    for change in ("x = 2\n", "x = 3\n"):
        (checkout / "code.py").write_text(change)
        state = read_git_state(checkout)
        assert state["git_dirty"] and len(state["git_diff_hash"]) == 16
        hashes.add(state["git_diff_hash"])
    (checkout / "new.py").write_text("y = 1\n")  # an untracked file is a change too
    hashes.add(read_git_state(checkout)["git_diff_hash"])
    assert len(hashes) == 3
    (checkout / "code.py").write_text("x = 2\n")
    (checkout / "new.py").unlink()
    assert read_git_state(checkout)["git_diff_hash"] in hashes  # the same change, the same hash


def test_an_untracked_symlink_counts_by_its_target(checkout, tmp_path):
    """A symlink to a folder (or to nothing) cannot be read as a file: its content, as git sees it, is its target."""
    (tmp_path / "data").mkdir()
    (checkout / "data").symlink_to(tmp_path / "data")
    state = read_git_state(checkout)
    assert state is not None and state["git_commit"] == git(checkout, "rev-parse", "HEAD") and state["git_dirty"]
    (checkout / "data").unlink()
    (checkout / "data").symlink_to(tmp_path / "elsewhere")  # dangling
    moved = read_git_state(checkout)
    assert moved is not None and moved["git_diff_hash"] != state["git_diff_hash"]


def test_a_folder_that_is_not_the_top_of_a_checkout_has_no_git_state(checkout, tmp_path):
    (checkout / "inside").mkdir()
    assert read_git_state(checkout / "inside") is None  # not the repository it happens to sit in
    assert read_git_state(tmp_path) is None


def test_the_environment_variable_carries_the_state_both_ways(checkout):
    for change in (None, "x = 5\n"):
        if change:
            (checkout / "code.py").write_text(change)
        state = read_git_state(checkout)
        assert decode_git_state(encode_git_state(state)) == state
