"""Length-grouped inspector batches and inspector gradient checkpointing."""
import math
import random

import torch

from squad.models import registry as models
from squad.train.batching import length_grouped


def _padded(lengths, batches):
    return sum(max(lengths[j] for j in b) * len(b) for b in batches)


def test_length_grouped_covers_every_row_once_and_cuts_padding():
    lengths = [random.Random(i).randint(5, 250) for i in range(1000)]
    batches = length_grouped(lengths, 32, seed=7)
    assert sorted(j for b in batches for j in b) == list(range(1000))
    assert all(len(b) <= 32 for b in batches) and sum(len(b) < 32 for b in batches) <= 4  # one short batch per window
    order = list(range(1000))
    random.Random(7).shuffle(order)
    plain = [order[i:i + 32] for i in range(0, 1000, 32)]
    assert _padded(lengths, batches) < 0.75 * _padded(lengths, plain)
    assert length_grouped(lengths, 32, seed=7) == batches  # the seed fixes the order
    assert length_grouped(lengths, 32, seed=8) != batches


def test_length_grouped_handles_tiny_inputs():
    assert length_grouped([], 4, seed=0) == []
    assert length_grouped([9], 4, seed=0) == [[0]]


def test_inspector_gradient_checkpointing_trains_the_same_weights():
    """inspector.gradient_checkpointing only trades compute for memory: the same adapter and head."""
    from squad.inspector.classifier import Head
    from squad.train.config import InspectorTrain
    from squad.train.inspector_loop import finetuned_encoder, fit_finetuned

    path = models.resolve("tiny-encoder")
    tok = models.load_tokenizer(path)
    rows = [{"question": f"question {i} " + "word " * (i % 7), "answer": "answer " * (1 + i % 5), "label": i % 2}
            for i in range(24)]
    trained = []
    for gc in (False, True):
        spec = InspectorTrain(kind="finetuned", features="joint", finetune_epochs=2, batch_size=4,
                              group_by_length=True, gradient_checkpointing=gc).model_dump()
        torch.manual_seed(0)
        enc = finetuned_encoder(str(path))
        head = Head(32, 8)
        before = {n: p.detach().clone() for n, p in head.named_parameters()}
        losses = []
        fit_finetuned(enc, head, tok, rows, spec, seed=0, on_epoch=lambda e, m: losses.append(m["loss"]))
        assert len(losses) == 2 and all(math.isfinite(l) for l in losses)  # two epochs, finite losses
        assert enc.is_gradient_checkpointing is gc
        assert any(not torch.equal(before[n], p) for n, p in head.named_parameters())
        trained.append({**{f"enc.{n}": p.detach() for n, p in enc.named_parameters() if p.requires_grad},
                        **{f"head.{n}": p.detach() for n, p in head.named_parameters()}})
    for n in trained[0]:
        torch.testing.assert_close(trained[0][n], trained[1][n], rtol=1e-4, atol=1e-6)
