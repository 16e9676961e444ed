"""Dataset folders written by the project load back with their own rows."""

from datasets import Dataset, load_dataset

from airrep.outputs import configs_yaml, write_parquet


def _folder(path, values):
    relative = write_parquet(Dataset.from_dict({"x": values}), path, "labels")
    (path / "README.md").write_text(f"---\n{configs_yaml({'labels': {'train': relative}})}\n---\n")
    return path


def test_equal_cards_with_different_rows_do_not_share_a_cache_entry(tmp_path):
    # Same folder name, same config names: datasets' cache key only differs through the file name.
    first = _folder(tmp_path / "a" / "labels-lds", [1, 2])
    second = _folder(tmp_path / "b" / "labels-lds", [3, 4, 5])
    assert load_dataset(str(first), "labels", split="train")["x"] == [1, 2]
    assert load_dataset(str(second), "labels", split="train")["x"] == [3, 4, 5]


def test_rewriting_replaces_the_old_file(tmp_path):
    folder = _folder(tmp_path / "labels", [1])
    _folder(folder, [1, 2])
    assert len(list((folder / "data").glob("labels-*.parquet"))) == 1
    assert load_dataset(str(folder), "labels", split="train")["x"] == [1, 2]
