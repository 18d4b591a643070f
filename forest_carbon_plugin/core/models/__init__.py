"""Models: applying ONNX models to rasters, training them and validating their maps.

Applying (``predictraster``, ``modelinfo``): :mod:`.card` (model cards: STAC MLM fields, Deepness metadata),
:mod:`.info`, :mod:`.onnx` (providers, sessions), :mod:`.intervals` (prediction, σ and bounds from the
declared outputs), :mod:`.pipeline` (strips and tiles read, run, blended and written), :mod:`.predict`.

Training (``trainmodel``): :mod:`.sampling` (pixels, points, polygons, plots), :mod:`.folds` (spatial
cross-validation), :mod:`.fit` (the learners), :mod:`.conformal` (interval calibration), :mod:`.export`
(one ONNX graph and its card), :mod:`.train` (the recipe and its report).

Validating (``validatepredictions``): :mod:`.accuracy` (metrics on arrays), :mod:`.validate`.
"""
