"""The main job runs end to end and attributes each demo query to its own task."""

from airrep.demo import main


def test_demo_attributes_queries_to_their_task(tmp_path, capsys):
    main(["--output_dir", str(tmp_path), "--top_k", "2"])
    out = capsys.readouterr().out
    assert (tmp_path / "model" / "config.json").exists()
    blocks = out.split("\nQuery: ")[1:]
    assert len(blocks) == 3
    for block, task in zip(blocks, ["add", "capital", "reverse"], strict=True):
        ranked = [line for line in block.splitlines() if line.strip()[:2] in {"1.", "2."}]
        assert len(ranked) == 2 and all(f"[{task}" in line for line in ranked), block
        assert f"-> top task: {task}" in block
    assert f"hf upload ORG/airrep-small-demo {tmp_path / 'model'}" in out
    # A second run reuses the checkpoint instead of rebuilding it.
    mtime = (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns
    main(["--output_dir", str(tmp_path)])
    assert (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns == mtime
