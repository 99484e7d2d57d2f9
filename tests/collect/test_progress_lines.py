"""The progress parser on real trainer output quoted in public issue threads (tests/data/progress, sources in
SOURCES.md): every expected step found with its loss, no false steps, decoys give nothing; and its behaviours
one by one (redraws, ranks, numbering, non-finite values, custom patterns)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from runlens.collect.progress_lines import PrintedEval, PrintedStep, ProgressParser, compile_pattern
from runlens.core.errors import BadParameter

CORPUS = Path(__file__).resolve().parents[1] / "data" / "progress"
EXPECTED: dict[str, dict[str, Any]] = json.loads((CORPUS / "expected.json").read_text())


def parse_file(path: Path, **kwargs: Any) -> list[Any]:
    parser = ProgressParser(live=False, **kwargs)
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        parser.feed(line, float(i))
    parser.finish()
    return parser.drain()


def same_loss(a: float | None, b: Any) -> bool:
    if b is None or a is None:
        return a is None and b is None
    if b == "nan":
        return math.isnan(a)
    return math.isclose(a, float(b), rel_tol=1e-6, abs_tol=1e-9)


def score(name: str) -> tuple[int, int, int, int]:
    """(expected steps, found that match, false steps, evaluation results) for one excerpt."""
    exp = EXPECTED[name]
    found = parse_file(CORPUS / name)
    steps = [r for r in found if isinstance(r, PrintedStep)]
    evals = sum(isinstance(r, PrintedEval) for r in found)
    losses = exp["losses"]
    numbers = exp["steps"] if exp["steps"] is not None else [None] * len(losses)
    wanted = list(zip(numbers, losses))
    matched = 0
    for s in steps:
        hit = next((w for w in wanted if (w[0] is None or w[0] == s.step) and same_loss(s.loss, w[1])
                    and ("rank" not in exp or s.rank == exp["rank"])), None)
        if hit is not None:
            wanted.remove(hit)
            matched += 1
    return len(losses), matched, len(steps) - matched, evals


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_excerpt_gives_its_steps_and_nothing_else(name: str) -> None:
    """Each excerpt: every expected step with its loss, no other step, and the expected evaluation results."""
    expected, matched, false, evals = score(name)
    assert (matched, false) == (expected, 0), f"{name}: {matched}/{expected} found, {false} false"
    assert evals == EXPECTED[name]["evals"], name


def test_corpus_sources_are_listed() -> None:
    """SOURCES.md names every excerpt and where it was quoted from."""
    sources = (CORPUS / "SOURCES.md").read_text()
    for name in EXPECTED:
        assert name in sources, name


def recall_by_trainer() -> dict[str, tuple[int, int, int]]:
    """(expected, found, false) steps per trainer over the corpus, for the note."""
    out: dict[str, tuple[int, int, int]] = {}
    for name, exp in EXPECTED.items():
        e, m, f, _ = score(name)
        a, b, c = out.get(exp["trainer"], (0, 0, 0))
        out[exp["trainer"]] = (a + e, b + m, c + f)
    return out


# -- behaviours ------------------------------------------------------------------------------------------------


def feed(parser: ProgressParser, *lines: str, redraw: bool = False, at: float = 0.0) -> list[Any]:
    """Feed ``lines`` one second apart; returns what the parser gave for them, the held redraws included."""
    for i, line in enumerate(lines):
        parser.feed(line, at + i, redraw=redraw)
    parser.finish()
    return parser.drain()


def test_a_bar_gives_the_last_redraw_of_each_count() -> None:
    """Lightning draws the new count with the previous loss, then its own: the step gets the second."""
    out = feed(ProgressParser(), "Epoch 0:  50%|#    | 1/2 [00:01<00:01, 1.0it/s, v_num=0, train_loss_step=0.900]",
               "Epoch 0:  50%|#    | 1/2 [00:01<00:01, 1.0it/s, v_num=0, train_loss_step=0.700]",
               "Epoch 0: 100%|##   | 2/2 [00:02<00:00, 1.0it/s, v_num=0, train_loss_step=0.700]",
               "Epoch 0: 100%|##   | 2/2 [00:02<00:00, 1.0it/s, v_num=0, train_loss_step=0.500]", redraw=True)
    steps = [(s.step, s.loss) for s in out]
    assert steps == [(1, 0.7), (2, 0.5)]


def test_lightning_epochs_continue_the_step_count() -> None:
    out = feed(ProgressParser(), "Epoch 0: 100%|##| 4/4 [00:01<00:00, 4.0it/s, v_num=1, train_loss_step=0.5]",
               "Epoch 1:  25%|# | 1/4 [00:00<00:01, 4.0it/s, v_num=1, train_loss_step=0.4]")
    assert [s.step for s in out] == [4, 5]


def test_ranks_each_get_their_steps_and_repeats_are_one_step() -> None:
    """[rankN]: prefixes give one step per rank; the same line printed twice without a prefix is one step."""
    p = ProgressParser()
    out = feed(p, "[rank0]:step: 1  loss:  2.5000", "[rank1]:step: 1  loss:  2.5000",
               "[rank1]:step: 1  loss:  2.5000", "step: 2  loss:  2.4", "step: 2  loss:  2.4")
    assert sorted((s.rank if s.rank is not None else -1, s.step) for s in out) == [(-1, 2), (0, 1), (1, 1)]


def test_nan_and_inf_are_kept_as_non_finite() -> None:
    out = feed(ProgressParser(), "iter 7: loss nan, time 10.00ms", "step 8 loss inf", "{'loss': '-inf', 'epoch': '1'}")
    assert math.isnan(out[0].loss) and out[1].loss == math.inf and out[2].loss == -math.inf


@pytest.mark.parametrize("line", [
    "[deepspeed] OVERFLOW! Rank 0 Skipping step. Attempted loss scale: 65536, reducing to 32768",
    "{'train_runtime': 31.2, 'train_samples_per_second': 10.3, 'train_steps_per_second': 0.64, 'train_loss': 2.1, 'epoch': 3.0}",
    "  logging_steps=10,", "warmup_steps = 500  # loss_type = 'ce'",
    "Token indices sequence length is longer than the specified maximum sequence length for this model (564 > 512).",
    "huggingface/tokenizers: The current process just got forked, after parallelism has already been used. "
    "Disabling parallelism to avoid deadlocks...",
    "Map: 100%|##########| 1000/1000 [00:00<00:00, 9000.00 examples/s]",
    "***** eval metrics *****", "  eval_loss               =     0.4321",
    "Saving checkpoint at step 1000 with loss 2.31 to out/ckpt.pt",
    "Epoch 00012: early stopping, best loss 0.3012 at epoch 9",
])
def test_decoys_are_not_steps(line: str) -> None:
    assert [r for r in feed(ProgressParser(), line) if isinstance(r, PrintedStep)] == []


def test_hf_dicts_take_the_training_bar_count_after_tqdm_write_clears_it() -> None:
    """tqdm.write clears the bar (a blank redraw), prints the dict, and redraws the bar at the logged step."""
    p = ProgressParser()
    p.feed(" 40%|####      | 4/10 [00:04<00:06,  1.00it/s]", 0.0, stream=2, redraw=True)
    p.feed("                                                 ", 0.1, stream=2, redraw=True)
    p.feed(" 50%|#####     | 5/10 [00:05<00:05,  1.00it/s]", 0.1, stream=2, redraw=True)   # read before the dict
    p.feed("{'loss': '0.5', 'grad_norm': '1.2', 'learning_rate': '4e-05', 'epoch': '0.5'}", 0.1, stream=1)
    p.feed("                                                 ", 0.2, stream=2, redraw=True)
    p.feed("{'loss': '0.4', 'grad_norm': '1.1', 'learning_rate': '3e-05', 'epoch': '1.0'}", 0.2, stream=1)
    p.feed("100%|##########| 10/10 [00:10<00:00,  1.00it/s]", 0.3, stream=2, redraw=True)   # read after it
    p.finish()
    assert [(s.step, s.loss, s.numbering) for s in p.drain()] == [(5, 0.5, "tqdm"), (10, 0.4, "tqdm")]


def test_hf_dicts_without_a_bar_are_numbered_from_logging_steps_else_by_order() -> None:
    line = "{'loss': 0.5, 'learning_rate': 4e-05, 'epoch': 0.5}"
    assert [s.step for s in feed(ProgressParser(logging_steps=25), line, line)] == [25, 50]
    assert [(s.step, s.numbering) for s in feed(ProgressParser(), line, line)] == [(1, "order"), (2, "order")]


def test_evaluation_lines_are_evaluations_with_their_duration() -> None:
    out = feed(ProgressParser(), "{'eval_loss': 0.25, 'eval_runtime': 3.5, 'eval_samples_per_second': 10.0, 'epoch': 1.0}",
               "step 500: train loss 4.3931, val loss 4.4297")
    assert [type(r) for r in out] == [PrintedEval, PrintedEval]
    assert out[0].metrics == {"eval_loss": 0.25} and out[0].duration == 3.5
    assert out[1].step == 500 and out[1].metrics["val_loss"] == 4.4297


def test_an_evaluation_bar_sets_the_eval_phase_until_training_resumes() -> None:
    p = ProgressParser()
    p.feed("Validation DataLoader 0:  50%|#####     | 5/10 [00:01<00:01,  5.00it/s]", 0.0)
    assert p.phase == "eval"
    p.feed("iter 10: loss 2.0, time 5.00ms", 1.0)
    assert p.phase is None


def test_epoch_lines_count_only_while_no_per_step_format_has_spoken() -> None:
    out = feed(ProgressParser(), "Epoch 1 loss 0.9", "step 10 loss 0.8", "Epoch 2 loss 0.7")
    assert [(s.step, s.loss) for s in out] == [(1, 0.9), (10, 0.8)]


def test_custom_pattern_wins_and_names_its_fields() -> None:
    rx = compile_pattern(r"it=(?P<step>\d+) L=(?P<loss>\S+) g=(?P<grad_norm>\S+) acc=(?P<acc>\S+)")
    out = feed(ProgressParser(pattern=rx), "it=12 L=0.25 g=1.5 acc=0.9")
    assert (out[0].step, out[0].loss, out[0].grad_norm, out[0].extras, out[0].fmt) == (12, 0.25, 1.5, {"acc": 0.9},
                                                                                        "pattern")


@pytest.mark.parametrize("pattern, why", [("step=(\\d+", "does not compile"), (r"step=\d+ loss=\S+", "has no")])
def test_a_bad_pattern_is_one_clear_error(pattern: str, why: str) -> None:
    with pytest.raises(BadParameter, match=re.escape(why)) as err:
        compile_pattern(pattern)
    assert "\n" not in str(err.value) and "--progress-pattern" in str(err.value)


def test_bytes_that_hold_no_progress_word_are_dropped_before_decoding() -> None:
    p = ProgressParser()
    p.feed_bytes(b"downloading shard 3 of 9", 0.0)
    p.feed_bytes(b"iter 3: loss 1.5, time 2.00ms", 0.0)
    assert [s.step for s in p.drain()] == [3]


def test_epoch_local_counts_become_global_steps() -> None:
    """A loop's "Epoch [2/5], Step [100/600]" and a bar described "Epoch 2/3" count within the epoch, from 1."""
    out = feed(ProgressParser(), "Epoch [1/5], Step [100/600], Loss: 0.2345", "Epoch [2/5], Step [100/600], Loss: 0.13",
               "Epoch 2/3: 50%|#####| 5/10 [00:01<00:01, 5.0it/s, loss=0.4]")
    assert [(s.step, s.loss) for s in out] == [(100, 0.2345), (700, 0.13), (15, 0.4)]


def test_fastai_table_rows_are_epochs_with_their_validation() -> None:
    out = feed(ProgressParser(), "epoch     train_loss  valid_loss  accuracy  time    ",
               "0         0.512345    0.401234    0.912000  00:10     ")
    assert [(type(r).__name__, getattr(r, "step", None)) for r in out] == [("PrintedStep", 0), ("PrintedEval", None)]
    assert out[0].loss == 0.512345 and out[1].metrics == {"valid_loss": 0.401234, "val_accuracy": 0.912}


def test_the_pytorch_examples_mnist_loop_counts_samples_across_epochs() -> None:
    out = feed(ProgressParser(), "Train Epoch: 1 [59520/60000 (99%)]\tLoss: 0.012345",
               "Test set: Average loss: 0.0321, Accuracy: 9900/10000 (99%)",
               "Train Epoch: 2 [640/60000 (1%)]\tLoss: 0.010000")
    assert [(type(r).__name__, getattr(r, "step", None)) for r in out] == [
        ("PrintedStep", 59520), ("PrintedEval", None), ("PrintedStep", 60640)]
    assert out[1].metrics == {"test_loss": 0.0321, "test_accuracy": 0.99}
