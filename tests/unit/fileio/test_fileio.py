"""The one atomic writer (a folder is replaced only by a complete one, and a failure leaves no trace)
and the one JSON Lines reader."""

from __future__ import annotations

import pytest

from stepvideo.fileio import atomic_folder, atomic_write_text


def test_a_complete_block_replaces_the_folder(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_folder(out) as tmp:
        assert tmp != out and tmp.parent == out.parent and not any(tmp.iterdir())
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").is_file()  # nothing moves until the block ends
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old folder left


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failed_block_keeps_the_old_folder_and_leaves_no_temp(tmp_path, error):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(error):
        with atomic_folder(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise error()
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(RuntimeError):
        with atomic_folder(tmp_path / "fresh") as tmp:
            raise RuntimeError
    assert not (tmp_path / "fresh").exists()


def test_atomic_write_text(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "b.txt", "x\n")
    assert path.read_text() == "x\n" and sorted(p.name for p in path.parent.iterdir()) == ["b.txt"]


def test_read_jsonl_names_the_file_and_line(tmp_path):
    from stepvideo.errors import InputError
    from stepvideo.fileio import read_jsonl

    path = tmp_path / "rows.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n', encoding="utf-8")
    assert list(read_jsonl(path)) == [(f"{path}:1", {"a": 1}), (f"{path}:3", {"a": 2})]
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(InputError, match=rf"{path}:2: not valid JSON"):
        list(read_jsonl(path))
    path.write_text('{"a": 1}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(InputError, match=rf"{path}:2: expected a JSON object, got list"):
        list(read_jsonl(path))


def test_atomic_path_replaces_on_success_and_cleans_up_on_failure(tmp_path):
    from stepvideo.errors import InputError
    from stepvideo.fileio import atomic_path

    target = tmp_path / "clip.mp4"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.suffix == ".mp4" and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("encoder died")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        with atomic_path(tmp_path / "folder"):
            pass
