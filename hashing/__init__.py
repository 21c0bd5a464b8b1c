"""Image hashing and matching: hash-type plug-ins, fast image hashing, the near-match index."""
