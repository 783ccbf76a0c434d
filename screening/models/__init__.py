"""The MOSAIC CNN8 model: the registry of published weights and the checkpoint contract (``registry``), the core,
the readouts and the encoders. The registry's names are re-exported here."""

from screening.models.registry import (DEFAULT_MODEL_ID, PUBLISHED, PUBLISHED_WIDTH, SUBJECTS, CheckpointInfo,
                                       EncoderWeights, get_weights, load_checkpoint, save_checkpoint,
                                       validate_state_dict, weights_for_variant)

__all__ = ["DEFAULT_MODEL_ID", "PUBLISHED", "PUBLISHED_WIDTH", "SUBJECTS", "CheckpointInfo", "EncoderWeights",
           "get_weights", "load_checkpoint", "save_checkpoint", "validate_state_dict", "weights_for_variant"]
