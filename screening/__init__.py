"""Dataset-scale brain-response screening with the MOSAIC CNN8 encoding model.

Public entry points (imported lazily so ``import screening`` stays cheap on Ray workers):
``BERG`` (BERG-compatible API), ``screen`` (Ray pipeline), ``make_store``, ``open_store``.
Rankings and ingest are ``screening.rank.rank`` and ``screening.ingest.ingest`` (modules of those names).
"""

__version__ = "0.1.0"

_LAZY = {
    "BERG": ("screening.api", "BERG"),
    "EncodingModel": ("screening.api", "EncodingModel"),
    "screen": ("screening.pipeline", "screen"),
    "make_store": ("screening.store.synthetic", "make_store"),
    "open_store": ("screening.store", "open_store"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'screening' has no attribute {name!r}")
