"""Backbones and decoders: the shapes every config promises, and LeNet as the literature defines it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cdlm_dist.config import ConfigError, compose
from cdlm_dist.model.networks import LeNetEncoder, MLPDecoder, build_decoder, build_encoder, mlp


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 28), (1, 32), (3, 32)])
def test_lenet_maps_images_to_latent_dim(channels, size):
    cfg = compose(["model=lenet", f"data.channels={channels}", f"data.image_size={size}"])
    enc = build_encoder(cfg.model, cfg.data)
    assert isinstance(enc, LeNetEncoder)
    h = enc(torch.rand(5, channels, size, size))
    assert h.shape == (5, cfg.model.latent_dim)


def test_lenet_is_the_literature_lenet():
    """conv 20 and conv 50 (5x5, no padding), fc 500, dropout, and no BatchNorm anywhere."""
    enc = LeNetEncoder(1, 28, 500, 64, 0.5)
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == \
        [(20, (5, 5), (0, 0)), (50, (5, 5), (0, 0))]
    linears = [m for m in enc.modules() if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(800, 500), (500, 64)]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    assert sum(isinstance(m, (nn.Dropout, nn.Dropout2d)) for m in enc.modules()) == 2


def test_lenet_dropout_is_active_only_in_training():
    enc = LeNetEncoder(1, 28, 500, 64, 0.5)
    x = torch.rand(4, 1, 28, 28)
    enc.eval()
    assert torch.equal(enc(x), enc(x))
    enc.train()
    assert not torch.equal(enc(x), enc(x))


def test_lenet_rejects_images_too_small_for_its_convolutions():
    with pytest.raises(ConfigError, match="too small for model.encoder=lenet"):
        compose(["model=lenet", "data.image_size=12"])


@pytest.mark.parametrize("arch", ["conv", "mlp"])
@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_decoders_render_latents_at_the_data_shape(arch, channels, size):
    cfg = compose([f"model.decoder_arch={arch}", f"data.channels={channels}",
                   f"data.image_size={size}"])
    dec = build_decoder(cfg.model, cfg.data, cond_dim=2)
    out = dec(torch.randn(3, cfg.model.latent_dim), torch.eye(2)[[0, 1, 0]])
    assert out.shape == (3, channels, size, size)


def test_mlp_decoder_decodes_rows_independently():
    """No BatchNorm: a row's image does not depend on the rest of the batch."""
    dec = MLPDecoder(8, 1, 28, 32)
    z = torch.randn(6, 8)
    assert torch.allclose(dec(z)[:2], dec(z[:2]), atol=1e-6)


def test_mlp_head_layers_and_norm():
    assert sum(isinstance(m, nn.Linear) for m in mlp(4, 8, 2, layers=3)) == 4
    normed = mlp(4, 8, 2, layers=2, norm=True)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in normed) == 2
    assert all(m.bias is None for m in list(normed)[:-1] if isinstance(m, nn.Linear))
