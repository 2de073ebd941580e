"""The Task contract: each task's metrics, targets and what it asks of the data, read from the task itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinykd.errors import TinykdError
from tinykd.labels import IGNORE_INDEX
from tinykd.tasks import TASKS, Task, generative_task, generative_tasks, get_task, is_generative


def test_the_registry_knows_the_five_tasks_and_an_unknown_name_is_one_line() -> None:
    assert TASKS.list() == ["causal-lm", "classification", "detection", "masked-lm", "seq2seq"]
    assert all(get_task(name).name == name for name in TASKS.list())
    with pytest.raises(TinykdError, match=r"unknown task 'causal_lm' \(did you mean: causal-lm\?\); known: "):
        get_task("causal_lm")


@pytest.mark.parametrize("shape", [(6, 5), (3, 4, 7)])
def test_metric_sums_are_top1_accuracy_and_mean_cross_entropy_without_the_ignored_targets(shape: tuple) -> None:
    torch.manual_seed(0)
    logits = torch.randn(*shape)
    targets = torch.randint(0, shape[-1], shape[:-1])
    targets.view(-1)[::3] = IGNORE_INDEX
    valid = targets != IGNORE_INDEX
    scores = Task().metrics(Task().metric_sums(logits, targets))
    assert scores["count"] == int(valid.sum())
    assert scores["accuracy"] == pytest.approx(float((logits.argmax(-1) == targets)[valid].float().mean()))
    assert scores["loss"] == pytest.approx(float(F.cross_entropy(logits[valid], targets[valid])), rel=1e-6)
    assert Task().step_counts(logits, targets).tolist() == Task().metric_sums(logits, targets)[[0, 2]].tolist()


def test_generative_tasks_report_perplexity_of_the_same_tokens() -> None:
    sums = torch.tensor([3.0, 8.0, 4.0])  # correct, summed loss, count
    assert get_task("causal-lm").metrics(sums)["perplexity"] == pytest.approx(math.exp(2.0))
    assert "perplexity" not in get_task("classification").metrics(sums)
    assert get_task("seq2seq").report_metrics == ("accuracy", "perplexity")
    assert get_task("classification").report_metrics == ("accuracy",)


def test_what_each_task_asks_of_the_data_and_the_report() -> None:
    cls, mlm, clm, s2s = (get_task(n) for n in ("classification", "masked-lm", "causal-lm", "seq2seq"))
    assert [t.needs_labels for t in (cls, mlm, clm, s2s)] == [True, False, False, False]
    assert [t.per_token for t in (cls, mlm, clm, s2s)] == [False, True, True, True]
    assert [t.per_sample_predictions for t in (cls, mlm, clm, s2s)] == [True, False, False, False]
    assert mlm.needs_mask_token and s2s.text_to_text and s2s.scores_generations and clm.allows_packing
    assert cls.allows_text_augment and not mlm.allows_text_augment and clm.min_tokens == 2
    assert [t.hf_auto_class for t in (cls, mlm, clm, s2s)] == ["AutoModelForSequenceClassification",
                                                               "AutoModelForMaskedLM", "AutoModelForCausalLM",
                                                               "AutoModelForSeq2SeqLM"]  # fmt: skip
    assert all(t.best_metric == "accuracy" for t in (cls, mlm, clm, s2s))  # the best checkpoint, as before
    assert generative_tasks() == ["causal-lm", "seq2seq"] and is_generative("seq2seq") and not is_generative(None)
    assert generative_task(True).name == "seq2seq" and generative_task(False).name == "causal-lm"


def test_causal_lm_targets_are_the_next_tokens_and_ignore_padding() -> None:
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (ids != 0).long()
    batch = get_task("causal-lm").targets(None, {"input_ids": ids, "attention_mask": mask}, torch.arange(2))
    assert batch.targets.tolist() == [[6, 7, -100, -100], [9, -100, -100, -100]]


def test_a_new_task_is_one_class_and_its_registration(tmp_path: Path) -> None:
    """A task added from outside the package (what the README's "Adding a task" says): the recipe accepts it,
    the engine picks the best checkpoint by its score, and the report shows its columns; nothing else changes."""
    import tinykd
    from tinykd.tasks.classification import Classification

    class TopTwo(Classification):
        name = "top2-classification"
        sum_names = ("correct", "loss", "count", "top2")
        best_metric = "top2"
        report_metrics = ("accuracy", "top2")

        def metric_sums(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            valid = targets != self.ignore_index
            top2 = ((logits.topk(2, dim=-1).indices == targets[..., None]).any(-1) & valid).sum().float()
            return torch.cat([super().metric_sums(logits, targets), top2[None]])

        def metrics(self, sums: torch.Tensor | list[float]) -> dict[str, float]:
            values = sums.tolist() if isinstance(sums, torch.Tensor) else list(sums)
            scores = super().metrics(values[:3])
            return {**scores, "top2": values[3] / max(scores["count"], 1)}

    TASKS.register("top2-classification")(TopTwo)
    try:
        recipe = {"name": "top2", "data": {"name": "digits", "batch_size": 64, "val_size": 0.15,
                                           "task": "top2-classification"},
                  "student": {"name": "cnn_small"}, "train": {"epochs": 2, "optimizer": {"lr": 0.05}},
                  "measure": {"enabled": False}}  # fmt: skip
        result = tinykd.run(recipe, out=tmp_path / "run", mode="train")
        row = result.metrics["models"][0]
        assert 0 < row["test_accuracy"] <= row["test_top2"] <= 1
        records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        top2 = [r["val_top2"] for r in records if r.get("event") == "epoch"]
        assert result.metrics["best_epoch"] == 1 + top2.index(max(top2))  # chosen by the task's own score
    finally:
        TASKS._entries.pop("top2-classification", None)
