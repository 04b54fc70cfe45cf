"""The DreamBench peer (diffusers' train_dreambooth.py's algorithm): its batch composition, its
two-part loss, and one real training step on the embedded model.

Rerun: `.venv/bin/pytest tests/research/test_peer.py -v`
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from boothstudio.services.diffusion.loading import embedded_model_dir
from research.dreambench import peer
from research.embedded_model.scenes import subject_images


def test_peer_batches_pair_instance_and_class_pictures_and_cover_each_epoch() -> None:
    steps = peer.batches(4, 10, 4, steps=7, gen=torch.Generator().manual_seed(0))
    assert len(steps) == 7
    epoch = steps[:3]  # 10 items: batches of 4, 4 and the short 2 kept
    assert [len(inst) for inst, _ in epoch] == [4, 4, 2]
    assert sorted(c for _, cls in epoch for c in cls) == list(range(10))
    for inst, cls in steps:  # item i is instance i mod 4 with class i mod 10
        assert len(inst) == len(cls)
        assert all(i == c % 4 for i, c in zip(inst, cls, strict=True))
    # without prior preservation an epoch is the instance pictures alone
    alone = peer.batches(4, 0, 4, steps=2, gen=torch.Generator().manual_seed(0))
    assert [sorted(inst) for inst, _ in alone] == [[0, 1, 2, 3]] * 2
    assert all(cls == [] for _, cls in alone)


def test_peer_loss_is_instance_mse_plus_weighted_prior_mse_on_the_class_half() -> None:
    pred, target = torch.randn(8, 4, 2, 2), torch.randn(8, 4, 2, 2)
    loss, prior = peer.dreambooth_loss(pred, target, prior_weight=0.5)
    assert prior is not None
    assert torch.allclose(prior, F.mse_loss(pred[4:], target[4:]))
    assert torch.allclose(loss, F.mse_loss(pred[:4], target[:4]) + 0.5 * prior)
    whole, none = peer.dreambooth_loss(pred, target, prior_weight=None)
    assert none is None and torch.allclose(whole, F.mse_loss(pred, target))


def test_peer_step_trains_the_unet_and_text_encoder_of_the_embedded_model() -> None:
    torch.manual_seed(0)
    parts = peer.load_parts(embedded_model_dir())
    gen = torch.Generator().manual_seed(0)
    pictures = [peer.picture_tensor(img, 64, gen) for img, _ in subject_images(2)]
    assert pictures[0].shape == (3, 64, 64) and -1 <= pictures[0].min() <= pictures[0].max() <= 1
    loss, prior = peer.train_step(parts, torch.stack(pictures * 2),
                                  [peer.INSTANCE_PROMPT] * 2 + [peer.CLASS_PROMPT] * 2, 1.0)
    assert prior is not None and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in parts["unet"].parameters())
    embeddings = parts["text_encoder"].get_input_embeddings().weight
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0
    assert all(p.grad is None for p in parts["vae"].parameters())
