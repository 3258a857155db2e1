"""The synthetic benchmark's information gap, through the plugin's own LR code path."""

from __future__ import annotations

from awares_lmms import protocol, synthetic


def test_generation_is_deterministic_with_exact_answers_and_boxes():
    a, b = synthetic.generate(30, seed=7), synthetic.generate(30, seed=7)
    assert [s.image.tobytes() for s in a] == [s.image.tobytes() for s in b]
    kinds = [s.kind for s in a]
    for kind, share in synthetic.DEFAULT_MIX.items():  # largest-remainder split of 30
        assert int(30 * share) <= kinds.count(kind) <= int(30 * share) + 1
    assert len(kinds) == 30
    for s in a:
        x0, y0, x1, y1 = s.evidence_box
        assert (x1 - x0, y1 - y0) == (synthetic.PATCH, synthetic.PATCH)
        assert x0 % synthetic.TOKEN == 0 and y0 % synthetic.TOKEN == 0  # 3x3 merged tokens exactly
        qx0, qy0, qx1, qy1 = protocol.region_box(s.quadrant, synthetic.SIZE, synthetic.SIZE)
        assert qx0 <= x0 and x1 <= qx1 and qy0 <= y0 and y1 <= qy1  # the square lies in its quadrant
        assert synthetic.score(s.answer.upper() + " stripes.", s.answer) == 1.0


def test_texture_is_readable_at_full_resolution_and_gone_at_low_resolution():
    gap = synthetic.probe_information_gap(n_train=300, n_test=150, seed=99)
    assert gap["probe_accuracy_hr"] >= 0.95
    # Chance is 1/3; with 150 test samples 0.45 is about 3 standard errors above it.
    assert gap["probe_accuracy_lr"] <= 0.45
