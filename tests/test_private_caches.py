"""Nothing executable is loaded from a folder another user could write: the ownership check
(cnn_parity.files.unsafe_to_load) and the JAX compilation cache, which JAX would otherwise fill with,
and run, compiled machine code from there (the oneDNN extension's refusals: test_onednn_conv.py)."""

from __future__ import annotations

import os

import pytest

from cnn_parity.files import unsafe_to_load
from flax_impl import compilation_cache


def test_a_private_folder_is_safe(tmp_path):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    assert unsafe_to_load(folder) is None


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o777])
def test_a_folder_others_can_write_is_not(tmp_path, mode):
    folder = tmp_path / "cache"
    folder.mkdir()
    folder.chmod(mode)
    assert unsafe_to_load(folder) == f"{folder} is writable by group or others (mode {mode:o})"


def test_a_folder_below_one_others_can_write_is_not_but_below_a_sticky_one_is(tmp_path):
    shared, private = tmp_path / "shared", tmp_path / "shared" / "mine"
    private.mkdir(parents=True, mode=0o700)
    shared.chmod(0o777)
    assert unsafe_to_load(private) == f"{shared} (above {private}) is writable by group or others (mode 777)"
    shared.chmod(0o1777)  # as /tmp: others cannot rename what this user owns there
    assert unsafe_to_load(private) is None


def test_a_folder_owned_by_another_user_is_not(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    folder.mkdir(mode=0o700)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(folder).st_uid + 1)
    assert "not by this user" in unsafe_to_load(folder)


def test_the_compilation_cache_is_off_in_a_folder_others_can_write(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "jax-cache"
    folder.mkdir()
    folder.chmod(0o777)
    monkeypatch.setenv(compilation_cache.ENV, str(folder))
    assert compilation_cache.enable() is None
    err = capsys.readouterr().err
    assert err == f"JAX compilation cache off: {folder} is writable by group or others (mode 777)\n"


@pytest.fixture
def link_into_another_users_folder(tmp_path):
    """LINK -> OTHER/cache: a folder owned by root, mode 0700, inside a folder another user owns (who
    could rename it away and put their own in its place): the checks must see OTHER."""
    if os.getuid() != 0:
        pytest.skip("needs root, to give a folder to another user")
    other = tmp_path / "other"
    other.mkdir()
    os.chown(other, 65534, 65534)
    target = other / "cache"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    return link, other


def test_a_link_is_judged_by_the_folders_above_its_real_path(link_into_another_users_folder):
    link, other = link_into_another_users_folder
    assert unsafe_to_load(link) == f"{other} (above {other / 'cache'}) is owned by uid 65534, neither this user nor root"


def test_the_compilation_cache_behind_such_a_link_is_off(link_into_another_users_folder, monkeypatch, capsys):
    link, other = link_into_another_users_folder
    monkeypatch.setenv(compilation_cache.ENV, str(link))
    assert compilation_cache.enable() is None
    assert f"{other} (above" in capsys.readouterr().err


def test_the_compilation_cache_is_given_the_real_path_it_checked(tmp_path, monkeypatch):
    target = tmp_path / "real-cache"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    monkeypatch.setenv(compilation_cache.ENV, str(link))
    given = {}
    monkeypatch.setattr(compilation_cache.jax.config, "update", lambda name, value: given.setdefault(name, value))
    assert compilation_cache.enable() == str(target)
    assert given["jax_compilation_cache_dir"] == str(target)


def test_no_folder_is_made_where_it_would_be_refused(link_into_another_users_folder, monkeypatch, capsys):
    """A cache folder that does not exist yet, below the link: the folders above are judged before
    anything is made, so the other user's folder is left as it was."""
    link, other = link_into_another_users_folder
    monkeypatch.setenv(compilation_cache.ENV, str(link / "jax" / "compilation-cache"))
    assert compilation_cache.enable() is None
    assert f"{other} (above" in capsys.readouterr().err
    assert list((other / "cache").iterdir()) == []
