"""The main job, end to end at the smoke preset: every stage runs, the report prints, a rerun reuses."""

import json
import logging

import pytest

from airrep.demo import main


def test_demo_runs_the_whole_pipeline_and_reuses_it(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    main(["--output_dir", str(tmp_path), "--preset", "smoke", "--top_k", "2"])
    out = capsys.readouterr().out
    # What a terminal shows, the log included, holds the table and each closing line once.
    shown = out + caplog.text
    closing = ("| airrep |", "hf upload ORG/airrep-small-demo", 'AutoModel.from_pretrained("ORG/', 'load_dataset("ORG/')
    for line in closing:
        assert shown.count(line) == 1, line
    for folder in ("corpus", "target-lm", "labels-train", "labels-lds", "model", "report"):
        assert (tmp_path / folder).is_dir(), folder
    assert "| airrep |" in out and "| logra |" in out and "noise ceiling sqrt(r)" in out
    assert f"Plot: {tmp_path / 'report' / 'lds.png'}" in out
    blocks = out.split("\nTest query [")[1:]
    assert len(blocks) == 2
    for block in blocks:
        assert [line.strip()[:2] for line in block.splitlines()[1:3]] == ["1.", "2."]
    assert f"hf upload ORG/airrep-small-demo {tmp_path / 'model'}" in out
    assert 'AutoModel.from_pretrained("ORG/airrep-small-demo", trust_remote_code=True)' in out

    mtime = (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns
    scores = (tmp_path / "report" / "scores" / "airrep.sum.npy").stat().st_mtime_ns
    main(["--output_dir", str(tmp_path), "--preset", "smoke"])
    assert (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns == mtime
    assert (tmp_path / "report" / "scores" / "airrep.sum.npy").stat().st_mtime_ns == scores
    assert "| airrep |" in capsys.readouterr().out

    # A checkpoint trained with other preset settings (an older version's, say) is not reused silently.
    record_file = tmp_path / "model" / "airrep_training.json"
    record = json.loads(record_file.read_text())
    record["preset"]["subsets_per_step"] += 1
    record_file.write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"trained with other settings .*\['subsets_per_step'\]\); remove it and"):
        main(["--output_dir", str(tmp_path), "--preset", "smoke"])
    assert (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns == mtime
