from albef.checkpoint.checkpointer import (
    ALBEFCheckpointer,
    CheckpointMismatchError,
    gather_rng_states,
    get_rng_state,
    set_rng_state,
)

__all__ = ["ALBEFCheckpointer", "CheckpointMismatchError", "gather_rng_states", "get_rng_state", "set_rng_state"]
