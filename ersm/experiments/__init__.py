"""What the claim notebooks call: model families, evaluation tables and verdicts, one module a claim.

- ``common``: the configs every notebook shares (dense, ERSM paper, ERSM calibrated, dense with
  Cutout, the beta=0 control, the spurious split), their trained models and test data.
- ``accuracy`` (01), ``sparsity`` (02), ``occlusion`` (03), ``deletion`` (04), ``mask_quality`` (05).
"""
