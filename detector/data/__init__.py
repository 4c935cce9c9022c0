"""Data layer: dataset readers (VOC, ILSVRC, COCO, YOLO, ImageFolder), images, box formats, conversion, transforms."""
