"""How any dataset appears in COCO JSON: image and category ids, and its instances dict.

COCO datasets keep their own ids; other datasets number images and classes from 1. Results
files name images by the dataset's image id instead (a number where it is one, ultralytics' rule).
"""
from __future__ import annotations

from detector.data.box_formats import xyxy_to_xywh
from detector.data.datasets import Dataset


def coco_ids(dataset: Dataset) -> tuple[list[int], list[int]]:
    """(image id per record, category id per class) used in COCO JSON for `dataset`.

    COCO datasets keep their own ids; other datasets number images and classes from 1.
    """
    image_ids = [r.coco_id if r.coco_id is not None else i + 1 for i, r in enumerate(dataset.records)]
    category_ids = dataset.coco_category_ids or list(range(1, len(dataset.classes) + 1))
    return image_ids, list(category_ids)


def results_image_ids(dataset: Dataset) -> list[int | str]:
    """The image_id of each record in COCO results files: COCO's own id on COCO data, else the
    dataset's image id, as a number where it is one (``000005`` -> 5, ultralytics' rule)."""
    return [
        r.coco_id if r.coco_id is not None else int(r.image_id) if r.image_id.isdecimal() else r.image_id
        for r in dataset.records
    ]


def ground_truth_json(dataset: Dataset) -> dict:
    """A COCO instances dict of `dataset`'s records (ids from :func:`coco_ids`)."""
    image_ids, category_ids = coco_ids(dataset)
    images, annotations = [], []
    for record, image_id in zip(dataset.records, image_ids):
        images.append({"id": image_id, "width": record.width, "height": record.height})
        xywh = xyxy_to_xywh(record.boxes)
        for box, label, ignore in zip(xywh.tolist(), record.labels.tolist(), record.ignore.tolist()):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_ids[label],
                "bbox": box, "area": box[2] * box[3], "iscrowd": int(ignore),
            })
    categories = [{"id": cid, "name": name} for cid, name in zip(category_ids, dataset.classes)]
    return {"images": images, "annotations": annotations, "categories": categories}
