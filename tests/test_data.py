"""Data: the procedural data set, the VOC and Cityscapes loaders on fixture trees written here, and
the joint augmentations."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dilconv.data import (Cityscapes, RandomCrop, RandomHorizontalFlip, RandomScale, SyntheticShapes,
                          VOCSegmentation, build_dataset, pad_collate, sample_generator,
                          train_transform)
from dilconv.data.cityscapes import TRAIN_IDS
from dilconv.data.voc import voc_colormap


# ------------------------------------------------------------------------------------------------
# synthetic

def test_synthetic_deterministic_per_index_and_seed():
    a = SyntheticShapes(10, size=(40, 56), seed=1)
    b = SyntheticShapes(10, size=(40, 56), seed=1)
    x3, y3 = a[3]
    assert x3.shape == (3, 40, 56) and x3.dtype == torch.float32
    assert y3.shape == (40, 56) and y3.dtype == torch.int64
    for i in (3, 7, 0):  # any access order, any instance
        torch.testing.assert_close(a[i][0], b[i][0], rtol=0, atol=0)
        assert torch.equal(a[i][1], b[i][1])
    assert not torch.equal(a[3][0], a[4][0])
    assert not torch.equal(SyntheticShapes(10, 40, seed=2)[3][1], SyntheticShapes(10, 40, seed=1)[3][1])
    a.set_epoch(5)  # no random transform: content does not depend on the epoch
    torch.testing.assert_close(a[3][0], x3, rtol=0, atol=0)
    with pytest.raises(IndexError):
        a[10]


def test_synthetic_labels_and_classes():
    ds = SyntheticShapes(40, size=48, num_classes=4, seed=0)
    seen = set()
    for i in range(len(ds)):
        _, m = ds[i]
        seen |= set(m.unique().tolist())
    assert seen == {0, 1, 2, 3}  # background + 3 shape classes, nothing else
    assert ds.class_names == ("background", "disc", "rectangle", "triangle")
    with pytest.raises(ValueError):
        SyntheticShapes(4, num_classes=9)
    with pytest.raises(ValueError):
        SyntheticShapes(4, size=4)


def test_synthetic_instances_consistent_with_mask():
    ds = SyntheticShapes(5, size=64, return_instances=True, seed=3)
    img, mask, inst = ds[2]
    assert img.dtype == torch.uint8 and img.shape == (3, 64, 64)
    assert torch.equal(inst > 0, mask > 0)
    for k in inst.unique().tolist():
        if k:
            assert mask[inst == k].unique().numel() == 1  # one class per instance


def test_synthetic_images_are_textured_not_flat():
    img, mask = SyntheticShapes(1, size=64, seed=0)[0]
    bg = img[:, mask == 0]
    assert bg.std(dim=1).min() > 0.05  # texture and noise, in normalised units


# ------------------------------------------------------------------------------------------------
# transforms

def _pair(h=20, w=30):
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    mask = torch.randint(0, 5, (h, w))
    return img, mask


def test_crop_pads_mask_with_ignore_and_image_with_fill():
    img, mask = _pair(10, 12)
    x, m = RandomCrop(16, fill=(1, 2, 3), ignore_index=255)(img, mask, torch.Generator().manual_seed(0))
    assert x.shape == (3, 16, 16) and m.shape == (16, 16)
    assert torch.equal(m[:10, :12], mask) and (m[10:] == 255).all() and (m[:, 12:] == 255).all()
    assert torch.equal(x[:, :10, :12], img)
    assert (x[0, 10:] == 1).all() and (x[2, :, 12:] == 3).all()


def test_crop_flip_keep_image_and_mask_aligned():
    # the mask is a function of the image: any geometric transform must keep that relation
    img = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    mask = img[0].long() % 7
    for seed in range(10):
        g = torch.Generator().manual_seed(seed)
        x, m = RandomCrop((17, 23))(img, mask, g)
        x, m = RandomHorizontalFlip(0.5)(x, m, g)
        assert torch.equal(x[0].long() % 7, m)


def test_flip_really_flips():
    img, mask = _pair()
    x, m = RandomHorizontalFlip(1.0)(img, mask, torch.Generator())
    assert torch.equal(x, img.flip(-1)) and torch.equal(m, mask.flip(-1))


def test_random_scale_nearest_for_masks():
    img, mask = _pair(20, 30)
    x, m = RandomScale(1.5, 1.5)(img, mask, torch.Generator())
    assert x.shape == (3, 30, 45) and m.shape == (30, 45)
    assert set(m.unique().tolist()) <= set(mask.unique().tolist())  # labels never blended
    # nearest: each output pixel takes its source pixel
    assert torch.equal(m[::3, ::3], mask[::2, ::2])


def test_train_transform_reproducible_per_generator():
    t = train_transform(24)
    img, mask = _pair(20, 30)
    a = t(img, mask, sample_generator(0, 1, 5))
    b = t(img, mask, sample_generator(0, 1, 5))
    c = t(img, mask, sample_generator(0, 2, 5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (3, 24, 24) and a[1].dtype == torch.int64
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))


def test_pad_collate():
    batch = [(torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.long)),
             (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.long))]
    x, m = pad_collate(batch)
    assert x.shape == (2, 3, 6, 5) and m.shape == (2, 6, 5)
    assert (m[0, 4:] == 255).all() and (m[1, :, 3:] == 255).all() and (x[0, :, 4:] == 0).all()


# ------------------------------------------------------------------------------------------------
# PASCAL VOC fixture

def _write_voc(root, ids_by_split, size=(24, 32)):
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    palette = voc_colormap().flatten().tolist()
    masks = {}
    rng = np.random.default_rng(0)
    for split, ids in ids_by_split.items():
        with open(os.path.join(root, "ImageSets/Segmentation", f"{split}.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
        for i in ids:
            h, w = size
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
                os.path.join(root, "JPEGImages", i + ".jpg"))
            m = rng.integers(0, 21, (h, w), dtype=np.uint8)
            m[0, :] = 255  # void border
            p = Image.fromarray(m, mode="P")
            p.putpalette(palette)
            p.save(os.path.join(root, "SegmentationClass", i + ".png"))
            masks[i] = m
    return masks


def test_voc_loader_reads_palette_masks(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    masks = _write_voc(str(root), {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]})
    for given in (root, tmp_path / "VOCdevkit", tmp_path):  # all accepted spellings of the root
        ds = VOCSegmentation(str(given), "train", transform=None)
        assert len(ds) == 2
    img, mask = ds[1]
    assert img.dtype == torch.uint8 and img.shape == (3, 24, 32)
    assert torch.equal(mask, torch.from_numpy(masks["2007_000002"].astype(np.int64)))
    assert (mask[0] == 255).all() and mask[1:].max() <= 20
    val = build_dataset(f"voc:{tmp_path}", "val")
    x, m = val[0]
    assert x.dtype == torch.float32 and torch.equal(m, torch.from_numpy(masks["2007_000003"].astype(np.int64)))
    tr = build_dataset(f"voc:{tmp_path}", "train", crop_size=40)
    x, m = tr[0]
    assert x.shape == (3, 40, 40) and m.shape == (40, 40)
    assert set(m.unique().tolist()) <= set(range(21)) | {255}


def test_voc_rgb_mask_decoded_through_palette(tmp_path):
    root = str(tmp_path)
    masks = _write_voc(root, {"train": ["a"]})
    m = masks["a"]
    rgb = voc_colormap()[m]
    Image.fromarray(rgb).save(os.path.join(root, "SegmentationClass", "a.png"))
    _, got = VOCSegmentation(root, "train")[0]
    assert torch.equal(got, torch.from_numpy(m.astype(np.int64)))


def test_voc_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no PASCAL VOC tree"):
        VOCSegmentation(str(tmp_path))
    _write_voc(str(tmp_path), {"train": ["a", "b"]})
    with pytest.raises(FileNotFoundError, match="splits here: train"):
        VOCSegmentation(str(tmp_path), "val")
    os.remove(tmp_path / "SegmentationClass" / "b.png")
    with pytest.raises(FileNotFoundError, match="missing"):
        VOCSegmentation(str(tmp_path), "train")


# ------------------------------------------------------------------------------------------------
# Cityscapes fixture

def _write_cityscapes(root, split, cities, size=(16, 32)):
    rng = np.random.default_rng(1)
    out = {}
    for city in cities:
        for n in range(2):
            name = f"{city}_{n:06d}_000019"
            d_img = os.path.join(root, "leftImg8bit", split, city)
            d_gt = os.path.join(root, "gtFine", split, city)
            os.makedirs(d_img, exist_ok=True)
            os.makedirs(d_gt, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                os.path.join(d_img, f"{name}_leftImg8bit.png"))
            ids = np.arange(size[0] * size[1]).reshape(size) % 34  # every label id appears
            Image.fromarray(ids.astype(np.uint8), mode="L").save(
                os.path.join(d_gt, f"{name}_gtFine_labelIds.png"))
            out[name] = ids
    return out


def test_cityscapes_label_to_train_id(tmp_path):
    ids = _write_cityscapes(str(tmp_path), "val", ["frankfurt", "lindau"])
    ds = Cityscapes(str(tmp_path), "val")
    assert len(ds) == 4 and ds.num_classes == 19
    img, mask = ds[0]
    assert img.shape == (3, 16, 32) and img.dtype == torch.uint8
    src = ids[os.path.basename(ds.images[0])[: -len("_leftImg8bit.png")]]
    expected = np.vectorize(lambda i: TRAIN_IDS.get(int(i), 255))(src)
    assert torch.equal(mask, torch.from_numpy(expected.astype(np.int64)))
    # spot checks of the table: road 7->0, car 26->13, bicycle 33->18; parking 9, guard rail 14 void
    flat_src, flat = src.flatten(), mask.flatten()
    for label_id, train_id in ((7, 0), (26, 13), (33, 18), (9, 255), (14, 255), (0, 255)):
        assert (flat[torch.from_numpy(flat_src == label_id)] == train_id).all()
    assert sorted(set(TRAIN_IDS.values())) == list(range(19))
    x, m = build_dataset(f"cityscapes:{tmp_path}", "val")[1]
    assert x.dtype == torch.float32 and m.shape == (16, 32)


def test_cityscapes_training_pipeline_and_errors(tmp_path):
    _write_cityscapes(str(tmp_path), "train", ["aachen"])
    ds = build_dataset(f"cityscapes:{tmp_path}", "train", crop_size=24)
    x, m = ds[0]
    assert x.shape == (3, 24, 24) and set(m.unique().tolist()) <= set(range(19)) | {255}
    with pytest.raises(FileNotFoundError, match="no Cityscapes split"):
        Cityscapes(str(tmp_path), "test")
    os.remove(tmp_path / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png")
    with pytest.raises(FileNotFoundError, match="1 of 2 label files"):
        Cityscapes(str(tmp_path), "train")


def test_data_spec_errors():
    with pytest.raises(ValueError, match="unknown data set"):
        build_dataset("imagenet:/x", "train")
    with pytest.raises(ValueError, match="needs a path"):
        build_dataset("voc", "train")
    tr = build_dataset("synthetic:12,3", "train", crop_size=32)
    va = build_dataset("synthetic:12,3", "val", crop_size=32)
    assert len(tr) == 12 and len(va) == 3 and not torch.equal(tr[0][0], va[0][0])
