from albef.checkpoint.checkpointer import (
    ALBEFCheckpointer,
    CheckpointFormatError,
    CheckpointMismatchError,
    gather_rng_states,
    get_rng_state,
    read_checkpoint_file,
    set_rng_state,
    write_safetensors,
)

__all__ = [
    "ALBEFCheckpointer", "CheckpointFormatError", "CheckpointMismatchError", "gather_rng_states", "get_rng_state",
    "read_checkpoint_file", "set_rng_state", "write_safetensors",
]
