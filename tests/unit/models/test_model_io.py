"""Model folders from users: a safetensors index may only name shards beside it."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from stepvideo.errors import InputError, MissingError
from stepvideo.models.io import INDEX_NAME, shard_files, weight_files


def _folder(tmp_path, weight_map):
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, str(folder / "model-00001-of-00001.safetensors"))
    (folder / INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))
    return folder


def test_a_valid_index_lists_its_shards(tmp_path):
    folder = _folder(tmp_path, {"w": "model-00001-of-00001.safetensors"})
    assert weight_files(folder) == [folder / "model-00001-of-00001.safetensors"]


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/model.safetensors", "..", "",
                                  "..\\\\outside.safetensors"])
def test_a_shard_outside_the_folder_is_refused(tmp_path, name):
    (tmp_path / "outside.safetensors").write_bytes(b"")
    folder = _folder(tmp_path, {"w": name})
    with pytest.raises(InputError, match="not a file name"):
        weight_files(folder)


def test_a_missing_shard_and_a_broken_index_name_the_file(tmp_path):
    folder = _folder(tmp_path, {"w": "model-00002-of-00002.safetensors"})
    with pytest.raises(MissingError, match="missing shard"):
        shard_files(folder / INDEX_NAME)
    for text in ("{not json", "[1, 2]", json.dumps({"weight_map": {"w": 3}}), json.dumps({"weight_map": {}})):
        (folder / INDEX_NAME).write_text(text)
        with pytest.raises(InputError, match=INDEX_NAME):
            shard_files(folder / INDEX_NAME)
