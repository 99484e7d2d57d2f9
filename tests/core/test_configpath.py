"""Config paths as recommendations name them: parsing and printing, reading and setting values at a path."""

from __future__ import annotations

from typing import Any

import pytest

from runlens.core.configpath import format_path, get_path, parse_path, set_path


@pytest.mark.parametrize(("text", "parts"), [
    ("config.process[0].datasets[0].num_workers", ["config", "process", 0, "datasets", 0, "num_workers"]),
    ("TrainingArguments.dataloader_num_workers", ["TrainingArguments", "dataloader_num_workers"]),
    ("trainer.accumulate_grad_batches", ["trainer", "accumulate_grad_batches"]),
    ('model["vae.path"]', ["model", "vae.path"]),
    ("a[0][1]", ["a", 0, 1]),
])
def test_parse_path(text: str, parts: list[Any]) -> None:
    assert parse_path(text) == parts
    assert parse_path(format_path(parts)) == parts


@pytest.mark.parametrize("bad", ["", "a..b", "a.", "a[x]", "a[0"])
def test_parse_path_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_path(bad)


def test_get_and_set_path_create_missing_sections() -> None:
    cfg: dict[str, Any] = {"config": {"process": [{"train": {"lr": 1e-4}}]}}
    assert get_path(cfg, "config.process[0].train.lr") == (True, 1e-4)
    assert get_path(cfg, "config.process[1].train") == (False, None)
    set_path(cfg, "config.process[0].train.ema_config.use_ema", False)
    set_path(cfg, "config.process[0].datasets[0].num_workers", 0)
    assert cfg["config"]["process"][0]["train"]["ema_config"] == {"use_ema": False}
    assert cfg["config"]["process"][0]["datasets"] == [{"num_workers": 0}]
    with pytest.raises(KeyError):
        set_path(cfg, "config.process[0].train.lr.x", 1)
    with pytest.raises(KeyError):
        set_path(cfg, "config.process[5].x", 1)
