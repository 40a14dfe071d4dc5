"""Training the `learned` score term (`extender learn`): samples from the simulator's replay or
from a live cluster's history, a LightGBM model, and the versioned model file that
`extender.policies.learned` loads."""
