"""The graph as deployed: what every stage after import profiles, quantizes and exports."""

from __future__ import annotations

from infoq_deploy.importing.fold_bn import FoldBatchNorm
from infoq_deploy.importing.layers import build_layer_table
from infoq_deploy.importing.model import ImportedModel


def deployable(model: ImportedModel) -> ImportedModel:
    """BatchNorm folded, layer table recomputed (folded biases count)."""
    gm = FoldBatchNorm().apply(model.graph)
    return ImportedModel(
        spec=model.spec,
        graph=gm,
        layers=build_layer_table(gm, model.preprocess.input_shape),
        preprocess=model.preprocess,
        fingerprint=model.fingerprint,
    )
