"""Model: the CDLM network (shared encoder, modulated latents, decoders, classifier, GRL critic)."""

from cdlm_dist.model.cdlm import CDLM, ForwardOutput, Pair, build_model, standardise, unwrap
from cdlm_dist.model.grl import grad_reverse, grl_coefficient

__all__ = ["CDLM", "ForwardOutput", "Pair", "build_model", "grad_reverse", "grl_coefficient",
           "standardise", "unwrap"]
