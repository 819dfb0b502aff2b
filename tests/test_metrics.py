"""The training metric: the same accuracies as torchmetrics, from one top-k per batch."""

from __future__ import annotations

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from cnnlab.training.metrics import TopKAccuracy


def test_top1_and_top5_equal_torchmetrics_over_several_batches():
    generator = torch.Generator().manual_seed(0)
    ours = TopKAccuracy(10, (1, 5), prefix="val/")
    reference = {k: MulticlassAccuracy(10, top_k=k, average="micro") for k in (1, 5)}
    for batch_size in (64, 17, 500):
        logits = torch.randn(batch_size, 10, generator=generator)
        labels = torch.randint(0, 10, (batch_size,), generator=generator)
        ours.update(logits, labels)
        for metric in reference.values():
            metric.update(logits, labels)
    values = ours.compute()
    assert set(values) == {"val/acc", "val/acc_top5"}
    assert values["val/acc"].item() == pytest.approx(reference[1].compute().item(), abs=1e-7)
    assert values["val/acc_top5"].item() == pytest.approx(reference[5].compute().item(), abs=1e-7)
    assert 0.05 < values["val/acc"] < values["val/acc_top5"] < 0.7  # chance level: 0.1 and 0.5


def test_counts_are_exact_and_reset_clears_them():
    logits = torch.tensor([[0.0, 3.0, 2.0, 1.0], [5.0, 1.0, 4.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    labels = torch.tensor([1, 2, 0])  # rank 1, rank 2, rank 4
    metric = TopKAccuracy(4, (1, 2, 5))  # 5 > 4 classes counts as 4: every label is in it
    metric.update(logits, labels)
    values = metric.compute()
    assert values == {"acc": pytest.approx(1 / 3), "acc_top2": pytest.approx(2 / 3), "acc_top5": pytest.approx(1.0)}
    metric.reset()
    metric.update(logits[:1], labels[:1])
    assert metric.compute()["acc"] == 1.0


def test_bad_k_is_rejected():
    with pytest.raises(ValueError, match="top_k"):
        TopKAccuracy(10, (0, 5))
