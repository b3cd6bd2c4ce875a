"""Object detection (in progress): a variable-length list of boxes per image.

What exists so far is the data layer, :mod:`cvplatform.tasks.detection.annotations` (COCO JSON,
YOLO txt and Pascal VOC XML in; checked boxes in pixels; the annotation table; COCO JSON out).
The task class that ``project.task: detection`` selects is not registered yet (see
docs/adr/0010-task-seam.md for how detection maps onto the ``Task`` interface).
"""
