"""``screening report --vertex-maps``: the full vertex responses of the few images the report's flatmaps show,
computed now with the run's recorded model (its store, model id, subjects and precision, from the manifest) through
the BERG API. The one place the report runs a model, and only when asked: without it the flatmaps paint the run's
committed ROI means (``figures.Flatmapper``), and say so."""

from __future__ import annotations

import numpy as np

from screening import atlas
from screening.exceptions import InvalidParameterError

RUN_PRECISIONS = ("fp32", "bf16", "fp16")


class VertexMaps:
    """Per-image (91282,) maps of the run's model, every image of ``wanted`` encoded in one call on first use.

    ``values(image_id, subject)``: the subject's vertex responses (float32, as ``BERG.encode`` returns them), or
    for ``mean`` their mean over the run's subjects (float64, as the pipeline's ``mean`` row averages ROI means);
    NaN on grayordinates the model has no vertex for."""

    def __init__(self, manifest: dict, images, wanted, subjects=()):
        self.manifest, self.images, self.wanted = manifest, images, list(dict.fromkeys(wanted))
        cfg = manifest.get("config") or {}
        self.subjects = list(cfg.get("subjects") or subjects)
        self.precision = cfg.get("precision") if cfg.get("precision") in RUN_PRECISIONS else "fp32"
        self._maps: dict = {}
        self._model = None

    def model(self):
        """``(BERG, EncodingModel)`` of the run: its store and model id, its subjects, every vertex."""
        if self._model is None:
            from screening.api import BERG
            from screening.report.data import storage_options

            cfg = self.manifest.get("config") or {}
            model_id = (self.manifest.get("model") or {}).get("model_id") or cfg.get("model_id")
            if not cfg.get("store") or not model_id:
                raise InvalidParameterError("the run's manifest names no store or model (config.store, "
                                            "model.model_id)")
            if not self.subjects:
                raise InvalidParameterError("the run's manifest names no subjects (config.subjects)")
            berg = BERG(str(cfg["store"]), storage_options=storage_options(cfg))
            self._model = berg, berg.get_encoding_model(model_id, subject=self.subjects, device="cpu",
                                                        precision=self.precision)
        return self._model

    @property
    def n_vertices(self) -> int:
        return int(self.model()[1].columns.size)

    def _encode(self, ids) -> None:
        from screening.preprocess import preprocess_bytes

        data = {i: self.images.bytes_of(i) for i in ids}
        missing = [i for i, d in data.items() if d is None]
        if missing:
            raise InvalidParameterError(f"the bytes of image {missing[0]!r} could not be read again (its source is "
                                        f"gone), so its vertex responses cannot be computed")
        berg, model = self.model()
        out = berg.encode(model, np.stack([preprocess_bytes(data[i]) for i in ids]))[model.weights.dataset]
        for k, i in enumerate(ids):
            self._maps[i] = {s: out[s][k] for s in model.subjects}

    def vertex_values(self, image_id: str, subject: str) -> np.ndarray:
        """The model's (V,) outputs of one image for ``subject`` (``mean``: over the run's subjects)."""
        if image_id not in self._maps:
            self._encode([i for i in self.wanted if i not in self._maps] if image_id in self.wanted else [image_id])
        per = self._maps[image_id]
        if subject == "mean":
            return np.mean(np.stack([per[s] for s in self.subjects]), axis=0, dtype=np.float64)
        if subject not in per:
            raise InvalidParameterError(f"subject {subject!r} is not one of the run's subjects {self.subjects}")
        return per[subject]

    def values(self, image_id: str, subject: str) -> np.ndarray:
        """(91282,) map of one image: :meth:`vertex_values` on the model's grayordinates, NaN elsewhere."""
        v = self.vertex_values(image_id, subject)
        out = np.full(atlas.N_GRAYORDINATES, np.nan)
        out[self.model()[1].vertex_mapping] = v
        return out
