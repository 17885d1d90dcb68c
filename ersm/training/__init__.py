"""The training engine: configs, the one training loop, the model cache and what they stand on.

``config`` (TrainConfig and its hash), ``engine`` (``ersm.fit``), ``cache`` (a config to a
trained model, cached under its hash), ``inference`` (batched evaluation passes),
``checkpoint``, ``distributed``, ``seeding``, ``devices`` and ``augment``. Nothing here reads
a test split or decides a verdict.
"""
