"""Evaluation: FID/IS/precision/recall with the FID Inception-v3 (``inception``, ``inception_weights``,
``features``, ``metrics``, ``image_sets``, ``evaluate``), teacher-forced token metrics per scale
(``token_metrics``) and scaling-law fits (``scaling``).  Submodules are imported on use."""
