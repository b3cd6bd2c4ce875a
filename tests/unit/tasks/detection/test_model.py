"""The CenterNet-style detector: targets decode back to the same boxes, the exported graph runs, training learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvplatform.tasks.detection.model import (
    OUTPUT_NAMES,
    CenterNet,
    ExportedDetector,
    centernet_loss,
    decode,
    encode_targets,
    postprocess,
)


def _perfect_outputs(targets, num_classes, grid, stride):
    """The raw maps a perfect network would output for ``targets``."""
    enc = encode_targets(targets, num_classes, grid, stride)
    n = len(targets)
    heat = torch.where(enc["heatmap"] >= 1.0, torch.tensor(8.0), torch.tensor(-8.0))  # logits: peaks only at centres
    size = torch.zeros(n, 2, *grid)
    off = torch.zeros(n, 2, *grid)
    size.flatten(2)[enc["batch"], :, enc["cell"]] = enc["size"]
    off.flatten(2)[enc["batch"], :, enc["cell"]] = enc["offset"]
    return {"heatmap": heat, "size": size, "offset": off}


def test_encoded_targets_decode_back_to_the_same_boxes():
    targets = [
        {"boxes": np.array([[3.0, 5.0, 20.0, 17.0], [30.0, 31.0, 60.0, 62.0]]), "labels": np.array([0, 2])},
        {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, int)},
        {"boxes": np.array([[10.5, 40.25, 25.0, 50.0]]), "labels": np.array([1])},
    ]
    outputs = _perfect_outputs(targets, 3, (16, 16), 4)
    boxes, scores, labels = decode(outputs, stride=4, k=20)
    assert boxes.shape == (3, 20, 4) and scores.shape == (3, 20) and labels.shape == (3, 20)
    dets = postprocess(boxes.numpy(), scores.numpy(), labels.numpy(), score_threshold=0.5)
    for t, d in zip(targets, dets, strict=True):
        order = np.argsort(d["boxes"][:, 0])
        np.testing.assert_allclose(d["boxes"][order], t["boxes"][np.argsort(t["boxes"][:, 0])], atol=1e-4)
        assert sorted(d["labels"].tolist()) == sorted(t["labels"].tolist())


def test_postprocess_thresholds_suppresses_same_class_duplicates_and_caps():
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60], [70, 70, 80, 80]]], np.float32)
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.1]], np.float32)
    labels = np.array([[0, 0, 1, 0, 0]])
    (d,) = postprocess(boxes, scores, labels, score_threshold=0.3, iou_threshold=0.6)
    assert d["scores"].tolist() == pytest.approx([0.9, 0.7, 0.6])  # same-class duplicate gone, other class kept
    assert d["labels"].tolist() == [0, 1, 0]
    (d,) = postprocess(boxes, scores, labels, score_threshold=0.3, max_detections=2)
    assert len(d["boxes"]) == 2


def _greedy_reference(b, s, lab, score_threshold, iou_threshold, max_detections):
    """Per-box greedy suppression, written the plain way: the kept indices of one image."""
    from cvplatform.tasks.detection.metrics import box_iou

    keep: list[int] = []
    for j in np.argsort(-s, kind="stable"):
        if s[j] < score_threshold or len(keep) >= max_detections:
            continue
        same = [q for q in keep if lab[q] == lab[j]]
        if not same or box_iou(b[j][None], b[same]).max() < iou_threshold:
            keep.append(int(j))
    return keep


def test_postprocess_equals_per_box_greedy_suppression_on_random_outputs():
    """The matrix form (one IoU matrix per image) keeps exactly the boxes of the per-box greedy loop, in the same
    order, on random boxes with ties, zero-width boxes, every threshold and cap."""
    rng = np.random.default_rng(0)
    for trial in range(200):
        n, k = 3, int(rng.integers(0, 50))
        xy, wh = rng.uniform(0, 50, (n, k, 2)), rng.uniform(0, 20, (n, k, 2))
        wh[..., 0] = np.where(rng.random((n, k)) < 0.1, 0.0, wh[..., 0])
        boxes = np.concatenate([xy, xy + wh], -1).astype(np.float32)
        scores = rng.random((n, k)).astype(np.float32)
        if trial % 2:
            scores = np.round(scores, 1)  # ties: the stable order decides
        labels = rng.integers(0, 3, (n, k))
        kw = {"score_threshold": float(rng.choice([0.0, 0.1, 0.3, 0.9])),
              "iou_threshold": float(rng.choice([0.1, 0.3, 0.6])), "max_detections": int(rng.choice([1, 2, 5, 100]))}
        for b, s, lab, d in zip(boxes, scores, labels, postprocess(boxes, scores, labels, **kw), strict=True):
            keep = _greedy_reference(b, s, lab, **kw)
            assert d["scores"].tolist() == s[keep].tolist() and d["labels"].tolist() == lab[keep].tolist()
            assert np.array_equal(d["boxes"], b[keep].reshape(-1, 4))


def test_the_exported_graph_matches_pytorch_with_a_dynamic_batch(tmp_path):
    import onnxruntime as ort

    torch.manual_seed(0)
    net = CenterNet("small_cnn", {"width": 8, "stages": 2}, num_classes=3).eval()
    model = ExportedDetector(net, stride=net.stride(32), k=10).eval()
    path = tmp_path / "det.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["input"],
                      output_names=list(OUTPUT_NAMES), dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in OUTPUT_NAMES}},
                      opset_version=17, dynamo=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    ref = [t.detach().numpy() for t in model(x)]
    got = sess.run(list(OUTPUT_NAMES), {"input": x.numpy()})
    np.testing.assert_allclose(got[0], ref[0], atol=1e-4)
    np.testing.assert_allclose(got[1], ref[1], atol=1e-5)
    np.testing.assert_array_equal(got[2], ref[2])


def test_training_steps_reduce_the_loss_on_a_tiny_batch():
    torch.manual_seed(0)
    net = CenterNet("small_cnn", {"width": 8, "stages": 2}, num_classes=2)
    stride = net.stride(32)
    x = torch.rand(8, 3, 32, 32)
    targets = []
    for i in range(8):
        x0, y0 = 2 + i, 4 + i
        x[i, :, y0:y0 + 12, x0:x0 + 10] = 1.0 if i % 2 else 0.0
        targets.append({"boxes": np.array([[x0, y0, x0 + 10, y0 + 12]], np.float32), "labels": np.array([i % 2])})
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        out = centernet_loss(net(x), targets, stride)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_cells_that_are_no_peak_fill_the_tail_in_index_order_with_score_zero():
    heat = torch.full((1, 2, 4, 4), -5.0)
    heat[0, 0] = torch.arange(16, dtype=torch.float32).reshape(4, 4) - 20.0  # a rising ramp: its last cell is the peak
    heat[0, 1, 2, 1] = 3.0  # one clear peak; the flat cells away from it tie with their neighbours
    outputs = {"heatmap": heat, "size": torch.zeros(1, 2, 4, 4), "offset": torch.zeros(1, 2, 4, 4)}
    boxes, scores, labels = decode(outputs, stride=4, k=32)
    cx, cy = (boxes[0, :, 0] + boxes[0, :, 2]) / 2, (boxes[0, :, 1] + boxes[0, :, 3]) / 2
    index = (labels[0] * 16 + (cy / 4).round().long() * 4 + (cx / 4).round().long()).tolist()
    n_peaks = int((scores[0] > 0).sum())
    peaks, tail = index[:n_peaks], index[n_peaks:]
    near = {16 + r * 4 + c for r in (1, 2, 3) for c in (0, 1, 2) if (r, c) != (2, 1)}  # beside the class-1 peak
    assert index[0] == 16 + 9 and scores[0, 0] == pytest.approx(float(torch.sigmoid(torch.tensor(3.0))))
    assert 15 in peaks and not near & set(peaks)
    flat = [i for i in peaks if i >= 16 and i != 25]
    assert flat, "a flat region still has its peaks"
    for a in flat:  # a tie between neighbours gives one peak, not one per cell
        for b in flat:
            ra, ca, rb, cb = (a - 16) // 4, (a - 16) % 4, (b - 16) // 4, (b - 16) % 4
            assert a == b or max(abs(ra - rb), abs(ca - cb)) > 1, (a, b)
    assert tail == sorted(tail) and len(tail) == 32 - n_peaks  # the no-peak cells, in index order
    assert scores[0, n_peaks:].tolist() == [0.0] * len(tail)


def test_equal_neighbours_are_told_apart_the_same_way_under_float_noise():
    """Exact ties (uniform padding, flat regions) must not be decided by the last bits of the runtime's arithmetic:
    one runtime calling a cell a peak and the other its neighbour made a box appear in one output only."""
    gen = torch.Generator().manual_seed(0)
    heat = torch.randn((2, 3, 12, 12), generator=gen) * 0.3 - 6.0
    heat[:, :, 4:8, 4:8] = -2.5  # plateaus of exactly equal logits
    heat[1, 2, :, 9:] = -3.7249  # a uniform strip at the border
    outputs = {"heatmap": heat, "size": torch.randn((2, 2, 12, 12), generator=gen) * 0.1,
               "offset": torch.rand((2, 2, 12, 12), generator=gen)}
    ref = decode(outputs, stride=4, k=3 * 12 * 12)  # every cell: peaks first, then the rest
    for seed in range(5):  # float32 noise of a few ULP, as between ONNX Runtime and PyTorch
        noise = torch.randn(heat.shape, generator=torch.Generator().manual_seed(seed)) * 2e-6
        got = decode({**outputs, "heatmap": heat + noise}, stride=4, k=3 * 12 * 12)
        for i in range(2):  # the same peaks (equal logits may come in any order: post-processing sorts them)
            def peaks(out, i=i):
                live = out[1][i] > 0
                rows = torch.cat([out[2][i][live].unsqueeze(1).float(), out[0][i][live]], dim=1)
                return rows[torch.argsort(rows[:, 0] * 1e6 + rows[:, 1] * 1e3 + rows[:, 2])]
            a, b = peaks(ref), peaks(got)
            assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5), (seed, i)
