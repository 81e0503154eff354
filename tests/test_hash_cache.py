"""Remembered file hashes: reused while a file's size, mtime and inode are unchanged, re-hashed when any changes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from hfcompress.utils import hash_cache
from hfcompress.utils.hash_cache import HashCache
from hfcompress.utils.hashing import file_sha256, tree_hashes


@pytest.fixture
def files(tmp_path):
    """Two data files whose mtime is an hour old (old enough to be remembered)."""
    root = tmp_path / "data"
    root.mkdir()
    hour_ago = time.time() - 3600
    for name, text in (("train.tsv", "sentence\tlabel\ngood film\t1\n"), ("dev.tsv", "sentence\tlabel\nbad film\t0\n")):
        (root / name).write_text(text)
        os.utime(root / name, (hour_ago, hour_ago))
    return root


@pytest.fixture
def hashed(monkeypatch):
    """The paths hashed from now on."""
    seen = []

    def counting(path):
        seen.append(path.name)
        return file_sha256(path)

    monkeypatch.setattr(hash_cache, "file_sha256", counting)
    return seen


def test_unchanged_files_are_not_read_again(files, hashed, session_cache_dir):
    first = tree_hashes(files, cached=True)
    assert sorted(hashed) == ["dev.tsv", "train.tsv"] and first == tree_hashes(files)
    hashed.clear()
    assert tree_hashes(files, cached=True) == first and hashed == []
    stored = json.loads(HashCache(files).path.read_text())
    assert {os.path.basename(k) for k in stored} == {"dev.tsv", "train.tsv"}
    assert HashCache(files).path.is_relative_to(session_cache_dir)


def test_a_file_rewritten_to_the_same_size_is_hashed_again(files, hashed):
    before = tree_hashes(files, cached=True)
    train = files / "train.tsv"
    train.write_text(train.read_text().replace("\t1\n", "\t0\n"))  # flipped label: same size, new content, new mtime
    hashed.clear()
    after = tree_hashes(files, cached=True)
    assert hashed == ["train.tsv"] and after["train.tsv"] != before["train.tsv"]
    assert after["train.tsv"] == file_sha256(train) and after["dev.tsv"] == before["dev.tsv"]


def test_a_file_whose_mtime_is_put_back_but_whose_inode_changed_is_hashed_again(files, hashed):
    tree_hashes(files, cached=True)
    train = files / "train.tsv"
    stat = train.stat()
    replacement = files / "new.tmp"
    replacement.write_text(train.read_text().replace("good", "nice"))  # same size
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(replacement, train)  # as editors and rsync do: a new inode with the old mtime
    hashed.clear()
    assert tree_hashes(files, cached=True)["train.tsv"] == file_sha256(train) and hashed == ["train.tsv"]


def test_a_file_modified_just_now_is_not_remembered(files, hashed):
    """Racy git: a second write within the same timestamp tick would keep the mtime, so fresh files are hashed every time."""
    (files / "train.tsv").write_text("sentence\tlabel\nfresh\t1\n")
    tree_hashes(files, cached=True)
    hashed.clear()
    tree_hashes(files, cached=True)
    assert hashed == ["train.tsv"]


def test_two_runs_sharing_the_cache_keep_each_others_entries(files, tmp_path):
    first, second = HashCache(files), HashCache(files)  # both read the cache before either saves
    first.sha256(files / "train.tsv")
    second.sha256(files / "dev.tsv")
    first.save()
    second.save()
    assert {os.path.basename(k) for k in json.loads(HashCache(files).path.read_text())} == {"dev.tsv", "train.tsv"}
    assert not list(HashCache(files).path.parent.glob("*.tmp*"))


def test_an_unreadable_cache_costs_only_the_hashing(files, hashed, monkeypatch, tmp_path, caplog):
    cache = HashCache(files)
    cache.path.parent.mkdir(parents=True, exist_ok=True)
    cache.path.write_text("{not json")
    assert tree_hashes(files, cached=True) == tree_hashes(files)
    monkeypatch.setenv(hash_cache.CACHE_ENV, str(files / "train.tsv"))  # a file where the cache directory should be
    hashed.clear()
    assert tree_hashes(files, cached=True) == tree_hashes(files) and sorted(hashed) == ["dev.tsv", "train.tsv"]
    assert "could not store file hashes" in caplog.text


def test_the_cache_directory_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(hash_cache.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hash_cache.cache_dir() == tmp_path / "xdg" / "hfcompress"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert hash_cache.cache_dir() == Path.home() / ".cache" / "hfcompress"
    monkeypatch.setenv(hash_cache.CACHE_ENV, str(tmp_path / "mine"))
    assert hash_cache.cache_dir() == tmp_path / "mine"
