"""Model zoo: pretrained models, model cards, ensemble bundles, applicability domain and batch prediction.

Modules, top to bottom (a module imports only those below it; ``lint-imports`` holds it): ``shipping`` (packs an
ensemble into the package, with measured figures), ``predictors`` (one interface over CGCNN, LTC checkpoints and
ensembles), ``catalog`` (entries and cards), ``cards`` (the card data of ``card.json`` and ``planned.json``),
``published`` (release archives), ``shipped`` (the package's model folder), ``bundle`` (ensemble bundles) and
``columns`` (the LTC value columns); beside them ``scan`` (files -> CSV, resumable, ranked), ``files`` and
``workers``.
"""
