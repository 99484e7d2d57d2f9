"""Writing a tuned copy of the user's config: comments and key order kept, the input never touched, paths that
are not config keys skipped."""

from __future__ import annotations

import json
from pathlib import Path

from sample_jobs import AITK_YAML

from runlens.report.tuned_config import apply_recommendations


def test_apply_keeps_comments_and_order_and_never_touches_the_input(tmp_path: Path) -> None:
    src = tmp_path / "config.yaml"
    src.write_text(AITK_YAML)
    out = tmp_path / "tuned.yaml"
    recs = [
        {"id": "memory.workers", "config_path": "config.process[0].datasets[0].num_workers", "recommended_value": 0},
        {"id": "memory.quantize", "config_path": "config.process[0].model.quantize", "recommended_value": True},
        {"id": "memory.alloc", "config_path": "env:PYTORCH_CUDA_ALLOC_CONF",
         "recommended_value": "expandable_segments:True"},
        {"id": "hf", "config_path": "TrainingArguments.dataloader_num_workers", "recommended_value": 2},
        {"id": "logs.x", "config_path": None, "recommended_value": None},
    ]
    result = apply_recommendations(src, recs, out)
    assert src.read_text() == AITK_YAML
    text = out.read_text()
    assert "          num_workers: 0   # dataloader workers\n" in text
    assert "# my LoRA run" in text and "# shown in the UI" in text and "# per step" in text
    assert "        quantize: true\n" in text
    keys = [ln.split(":")[0].strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert keys[:4] == ["job", "config", "name", "process"]
    assert [c.rec_id for c in result.applied] == ["memory.workers", "memory.quantize"]
    assert {c.rec_id for c in result.skipped} == {"memory.alloc", "hf"}


def test_apply_hf_paths_to_a_flat_args_json(tmp_path: Path) -> None:
    src = tmp_path / "args.json"
    src.write_text(json.dumps({"output_dir": "out", "per_device_train_batch_size": 16, "learning_rate": 3e-4}))
    out = tmp_path / "tuned.json"
    apply_recommendations(src, [
        {"id": "b", "config_path": "TrainingArguments.per_device_train_batch_size", "recommended_value": 8},
        {"id": "w", "config_path": "TrainingArguments.dataloader_num_workers", "recommended_value": 4},
    ], out)
    assert list(json.loads(out.read_text()).items()) == [
        ("output_dir", "out"), ("per_device_train_batch_size", 8), ("learning_rate", 3e-4),
        ("dataloader_num_workers", 4)]
