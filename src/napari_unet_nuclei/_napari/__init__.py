"""napari dock widgets of napari-unet-nuclei: Train, Segment and Evaluate.

Every Qt and napari import of the package lives in this subpackage; the engine modules
(training, inference, metrics, datasets) never import it. The widgets share one
:class:`~napari_unet_nuclei._napari.model_registry.ModelRegistry` per viewer, so a model
trained in *Train* appears in the pickers of *Segment* and *Evaluate*.

The widget classes are imported by napari from their own modules (see ``napari.yaml``);
nothing is imported here so that reading the manifest stays light.
"""
