"""Object detection: a variable-length list of boxes per image (``project.task: detection``).

* :mod:`~cvplatform.tasks.detection.task`: :class:`DetectionTask`, what every stage asks of the task
  (annotation-table targets, the training module, the ONNX contract, agreement, COCO metrics, responses);
* :mod:`~cvplatform.tasks.detection.annotations`: COCO JSON, YOLO txt and Pascal VOC XML in; checked boxes in
  pixels; the annotation table; COCO JSON out;
* :mod:`~cvplatform.tasks.detection.scenes`: the built-in multi-object scenes;
* :mod:`~cvplatform.tasks.detection.model` / :mod:`~cvplatform.tasks.detection.module`: the CenterNet detector
  and its LightningModule (torch, imported only when training or exporting);
* :mod:`~cvplatform.tasks.detection.metrics` / :mod:`~cvplatform.tasks.detection.postprocess`: COCO metrics and
  the numpy post-processing shared by evaluation and serving.

See docs/detection.md for what works end to end and what is still missing.
"""

from cvplatform.tasks.detection.task import DetectionTask

__all__ = ["DetectionTask"]
