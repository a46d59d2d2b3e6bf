"""Data: the domain registry, its loaders, and deterministic batch streams.

Importing this package registers every loader (embedded and file-backed).
"""

from cdlm_dist.data import (
    embedded,  # noqa: F401  (registers mnist5k, ucidigits, mnistm_synth)
    files,  # noqa: F401  (registers mnist, usps, svhn)
    images,  # noqa: F401  (registers mnistm, imagefolder:<path>)
    parquet,  # noqa: F401  (registers parquet:<path>)
    shards,  # noqa: F401  (registers shards:<folder>)
)
from cdlm_dist.data.domains import (
    DOMAINS,
    DomainData,
    RawDomain,
    Split,
    check_domain_name,
    load_domain,
    load_domains,
    register_domain,
    register_family,
)
from cdlm_dist.data.parquet import read_prepared
from cdlm_dist.data.streams import BatchStream, MultiDomainStream, iterate_split

__all__ = ["DOMAINS", "BatchStream", "DomainData", "MultiDomainStream", "RawDomain", "Split",
           "check_domain_name", "iterate_split", "load_domain", "load_domains", "read_prepared",
           "register_domain", "register_family"]
