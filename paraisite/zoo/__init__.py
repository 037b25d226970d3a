"""Model zoo: pretrained models, model cards, ensemble bundles, applicability domain and batch prediction.

Modules: ``catalog`` (entries and cards), ``bundle`` (ensemble bundles), ``predictors`` (one interface over CGCNN,
LTC checkpoints and ensembles), ``applicability`` (unseen elements, latent kNN distances) and ``scan`` (files ->
CSV, resumable, ranked).
"""
