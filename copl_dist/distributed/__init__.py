"""Ray at the edges: the runtime (local or cluster), Ray Train for IOCNet, HAS actors."""
