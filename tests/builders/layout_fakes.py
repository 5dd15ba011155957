"""Tiny fake dataset trees mimicking the published layouts (for tests/builders/test_layouts.py).

Each ``make_*`` writes a few 8x8 images plus label/split files into ``root`` and returns
what the reader should produce (``classes`` and per-split ``(relative path, label)`` lists).
"""
from __future__ import annotations

import io
import json
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


@lru_cache(maxsize=None)
def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 60)).save(buf, format=fmt)
    return buf.getvalue()


def img(path: Path) -> Path:
    """Write a real 8x8 image (PNG for .png, JPEG otherwise)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_image_bytes("PNG" if path.suffix.lower() == ".png" else "JPEG"))
    return path


def text(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def struct_array(rows: list[dict], shape: str = "row") -> np.ndarray:
    """A MATLAB struct array (1, N) (or (N, 1)) with object fields, as scipy.io.savemat saves it."""
    fields = list(rows[0])
    arr = np.zeros((1, len(rows)) if shape == "row" else (len(rows), 1), dtype=[(f, "O") for f in fields])
    for i, r in enumerate(rows):
        arr.flat[i] = tuple(r[f] for f in fields)
    return arr


def cell_row(items: list[str]) -> np.ndarray:
    arr = np.empty((1, len(items)), dtype=object)
    for i, s in enumerate(items):
        arr[0, i] = s
    return arr


# --- imagenet -------------------------------------------------------------------------------

WNIDS = ["n01000001", "n02000002", "n03000003"]
# val image k (1-based) -> wnid
VAL_WNIDS = ["n02000002", "n01000001", "n03000003", "n03000003", "n01000001", "n02000002"]


def make_imagenet(root: Path, val: str) -> None:
    """``val``: 'folders', 'kaggle' (csv in root's parent), 'txt', or 'devkit'."""
    for w in WNIDS:
        for j in range(2):
            img(root / "train" / w / f"{w}_{j}.JPEG")
    if val == "folders":
        for k, w in enumerate(VAL_WNIDS, 1):
            img(root / "val" / w / f"ILSVRC2012_val_{k:08d}.JPEG")
        return
    for k in range(1, len(VAL_WNIDS) + 1):
        img(root / "val" / f"ILSVRC2012_val_{k:08d}.JPEG")
    if val == "kaggle":
        rows = ["ImageId,PredictionString"]
        # Kaggle's csv is not in file order
        for k in reversed(range(1, len(VAL_WNIDS) + 1)):
            w = VAL_WNIDS[k - 1]
            rows.append(f"ILSVRC2012_val_{k:08d},{w} 1 2 3 4 {w} 5 6 7 8")
        text(root.parent / "LOC_val_solution.csv", rows)
        text(root.parent / "LOC_synset_mapping.txt", [f"{w} thing {i}, alias" for i, w in enumerate(WNIDS)])
    elif val == "txt":
        text(root / "val_labels.txt",
             [f"ILSVRC2012_val_{k:08d}.JPEG {w}" for k, w in enumerate(VAL_WNIDS, 1)])
    elif val == "devkit":
        # ILSVRC2012_IDs deliberately not in sorted-wnid order; plus a non-leaf synset.
        ids = {"n03000003": 1, "n01000001": 2, "n02000002": 3, "n09999999": 4}
        rows = [dict(ILSVRC2012_ID=np.array([[i]], dtype=np.uint16), WNID=w, words=f"words of {w}",
                     gloss="a gloss", num_children=np.array([[0]], dtype=np.uint16),
                     children=np.zeros((1, 0), dtype=np.uint16), wordnet_height=np.array([[0]], dtype=np.uint8),
                     num_train_images=np.array([[2]], dtype=np.uint16)) for w, i in ids.items()]
        data = root / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        scipy.io.savemat(str(data / "meta.mat"), {"synsets": struct_array(rows, shape="col")})
        text(data / "ILSVRC2012_validation_ground_truth.txt", [str(ids[w]) for w in VAL_WNIDS])
    else:
        raise ValueError(val)


# --- flowers102 -----------------------------------------------------------------------------

FLOWER_LABELS = [1, 2, 3, 1, 2, 3, 1, 2, 3, 3]  # 1-based, per image id 1..10
FLOWER_SETS = {"trnid": [1, 2, 3], "valid": [4, 5, 6], "tstid": [10, 9, 8, 7]}


def make_flowers102(root: Path, names: bool = False) -> None:
    for i in range(1, len(FLOWER_LABELS) + 1):
        img(root / "jpg" / f"image_{i:05d}.jpg")
    scipy.io.savemat(str(root / "imagelabels.mat"), {"labels": np.array([FLOWER_LABELS], dtype=np.uint8)})
    scipy.io.savemat(str(root / "setid.mat"), {k: np.array([v], dtype=np.uint16) for k, v in FLOWER_SETS.items()})
    if names:
        (root / "cat_to_name.json").write_text(json.dumps({"2": "hard-leaved pocket orchid", "1": "pink primrose",
                                                           "3": "canterbury bells"}))


# --- dtd ------------------------------------------------------------------------------------

DTD_CLASSES = ["banded", "dotted", "zigzagged"]


def make_dtd(root: Path) -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c in DTD_CLASSES:
        for j, split in enumerate(["train", "val", "test", "test"]):
            rel = f"{c}/{c}_{j:04d}.jpg"
            img(root / "images" / rel)
            lists[split].append(rel)
    for split, rels in lists.items():
        text(root / "labels" / f"{split}1.txt", rels)
    return lists


# --- ucf101 ---------------------------------------------------------------------------------

UCF_CLASSES = ["ApplyEyeMakeup", "Basketball", "HandstandPushups"]


def make_ucf101(root: Path, coop_folders: bool = False) -> None:
    mid = root / "UCF-101-midframes"
    train, test = [], []
    for i, c in enumerate(UCF_CLASSES, 1):
        folder = {"ApplyEyeMakeup": "Apply_Eye_Makeup", "HandstandPushups": "Handstand_Pushups"}.get(c, c) \
            if coop_folders else c
        file_c = "HandStandPushups" if c == "HandstandPushups" else c
        for g in (8, 9, 1):
            stem = f"v_{file_c}_g{g:02d}_c01"
            img(mid / folder / f"{stem}.jpg")
            if g == 1:
                test.append(f"{c}/{stem}.avi")
            else:
                train.append(f"{c}/{stem}.avi {i}")
    lists = root / "ucfTrainTestlist"
    text(lists / "classInd.txt", [f"{i} {c}" for i, c in enumerate(UCF_CLASSES, 1)])
    text(lists / "trainlist01.txt", train)
    text(lists / "testlist01.txt", test)


# --- food101 --------------------------------------------------------------------------------

FOOD_CLASSES = ["apple_pie", "baby_back_ribs", "waffles"]


def make_food101(root: Path) -> None:
    train, test = [], []
    for c in FOOD_CLASSES:
        for j, n in enumerate([101, 202, 303]):
            img(root / "images" / c / f"{n}.jpg")
            (test if j == 2 else train).append(f"{c}/{n}")
    text(root / "meta" / "classes.txt", FOOD_CLASSES)
    text(root / "meta" / "train.txt", train)
    text(root / "meta" / "test.txt", test)


# --- oxfordpets -----------------------------------------------------------------------------

PET_CLASSES = ["Abyssinian", "american_bulldog", "Bengal"]  # class ids 1, 2, 3


def make_oxfordpets(root: Path) -> None:
    header = ["#Image CLASS-ID SPECIES BREED ID", "#ID: 1:37 Class ids", "#All images with 1st letter as "
              "captial are cat images"]
    trainval, test = list(header), list(header)
    for cid, c in enumerate(PET_CLASSES, 1):
        species = 1 if c[0].isupper() else 2
        for n in (1, 2, 3):
            img(root / "images" / f"{c}_{n}.jpg")
            (test if n == 3 else trainval).append(f"{c}_{n} {cid} {species} {cid}")
    text(root / "annotations" / "trainval.txt", trainval)
    text(root / "annotations" / "test.txt", test)


# --- stanfordcars ---------------------------------------------------------------------------

CAR_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
CAR_TRAIN = [("00001.jpg", 3), ("00002.jpg", 1), ("00003.jpg", 2), ("00004.jpg", 1)]
CAR_TEST = [("00001.jpg", 2), ("00002.jpg", 3), ("00003.jpg", 1)]


def _car_annos(items: list[tuple[str, int]]) -> np.ndarray:
    b = lambda v: np.array([[v]], dtype=np.uint16)  # noqa: E731
    return struct_array([dict(bbox_x1=b(1), bbox_y1=b(2), bbox_x2=b(7), bbox_y2=b(7),
                              **{"class": np.array([[c]], dtype=np.uint8)}, fname=f) for f, c in items])


def make_stanfordcars(root: Path) -> None:
    for f, _ in CAR_TRAIN:
        img(root / "cars_train" / f)
    for f, _ in CAR_TEST:
        img(root / "cars_test" / f)
    (root / "devkit").mkdir(parents=True)
    scipy.io.savemat(str(root / "devkit" / "cars_meta.mat"), {"class_names": cell_row(CAR_CLASSES)})
    scipy.io.savemat(str(root / "devkit" / "cars_train_annos.mat"), {"annotations": _car_annos(CAR_TRAIN)})
    scipy.io.savemat(str(root / "cars_test_annos_withlabels.mat"), {"annotations": _car_annos(CAR_TEST)})


# --- sun397 ---------------------------------------------------------------------------------

SUN_CLASSES = ["/a/abbey", "/a/apartment_building/outdoor", "/b/bakery/shop"]


def make_sun397(root: Path) -> tuple[list[str], list[str]]:
    """SUN397/ inside ``root``; ClassName.txt in SUN397/, partitions in root/Partitions."""
    sun = root / "SUN397"
    train, test = [], []
    for c in SUN_CLASSES:
        for j in range(3):
            rel = f"{c}/sun_{c.strip('/').replace('/', '')}{j}.jpg"
            img(sun / rel.lstrip("/"))
            (test if j == 2 else train).append(rel)
    text(sun / "ClassName.txt", SUN_CLASSES)
    text(root / "Partitions" / "Training_01.txt", train)
    text(root / "Partitions" / "Testing_01.txt", test)
    return train, test


# --- cifar10 --------------------------------------------------------------------------------

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def make_cifar10(root: Path, n: int = 4) -> dict[str, np.ndarray]:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=n)]
        with open(d / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"x.png"] * n}, f)
        batches[name] = (data, labels)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR_CLASSES], b"num_cases_per_batch": n,
                     b"num_vis": 3072}, f)
    return batches
