"""Several real processes write to one store at once (``_store_worker.py burst``).

Each worker opens its own Store on the shared home, waits at a start barrier, then does
``add_correction`` for two shared users and a ``save_head`` every 15 corrections. The
parent then checks that every id a worker got back is in the database exactly once with the
worker's exact data, that head versions were allocated without collisions, and that every
head loads and passes its sha256 check.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from emoadapt.store import Store

from . import _procs
from . import _store_worker as worker

WORKER = Path(worker.__file__).resolve()


def _run_burst(home: Path, n_workers: int, n_each: int, head_every: int) -> tuple[list[list[str]], float]:
    commands = [
        _procs.command(WORKER, "burst", home, worker=w, n=n_each, head_every=head_every, users="alice,bob", keep_heads="none") for w in range(n_workers)
    ]
    outs, wall, _ = _procs.run_burst(commands, env=_procs.child_env(), timeout=300)
    return outs, wall


@pytest.mark.parametrize(
    "n_workers,n_each",
    [(4, 75), pytest.param(8, 150, marks=pytest.mark.slow)],
    ids=["4x75", "8x150"],
)
def test_processes_share_one_store(tmp_path, n_workers, n_each, record_property):
    home = tmp_path / "home"  # does not exist yet: the workers race to create it
    head_every = 15
    outs, wall = _run_burst(home, n_workers, n_each, head_every)

    corrections: dict[int, tuple[int, int, str]] = {}
    heads: list[tuple[str, int, int, int]] = []
    for w, lines in enumerate(outs):
        assert lines[-1] == "DONE"
        for line in lines:
            kind, *f = line.split()
            if kind == "C":
                cid, ww, i, user = int(f[0]), int(f[1]), int(f[2]), f[3]
                assert ww == w
                assert cid not in corrections, f"id {cid} returned twice"
                corrections[cid] = (w, i, user)
            elif kind == "H":
                heads.append((f[0], int(f[1]), int(f[2]), int(f[3])))
    total = n_workers * n_each
    assert len(corrections) == total

    with Store(home) as st:
        assert st.check() == []
        seen: list[int] = []
        for user in ("alice", "bob"):
            recs = st.corrections(user)
            data = st.correction_data(user)
            seen += data.ids
            assert [r.id for r in recs] == data.ids
            for rec, feats, label in zip(recs, data.features, data.labels):
                w, i, u = corrections[rec.id]
                exp_feats, exp_desc, exp_label = worker.correction_payload(w, i)
                assert u == user and label == exp_label and rec.model_version == f"worker-{w}"
                assert feats.tobytes() == exp_feats.tobytes()
            descs = st.descriptor_data(user)
            for cid, d in zip(descs.ids, descs.descriptors):
                w, i, _ = corrections[cid]
                assert d.tobytes() == worker.correction_payload(w, i)[1].tobytes()
        # every returned id present exactly once, and nothing else
        assert Counter(seen) == Counter(corrections.keys())
        assert len(seen) == total

        # head versions: no collisions, contiguous per user, all loadable with the right data
        n_heads = 0
        for user in ("alice", "bob"):
            mine = sorted((v, w, i) for u, v, w, i in heads if u == user)
            versions = [v for v, _, _ in mine]
            assert versions == list(range(1, len(versions) + 1)), versions
            recs = st.head_versions(user)
            assert [r.version for r in recs] == versions
            assert [r.status for r in recs] == ["standby"] * (len(recs) - 1) + ["active"]
            for v, w, i in mine:
                h = st.load_head(user, v)
                arrays, meta = worker.head_payload(w, i)
                assert h.meta == meta and h.metrics == {"i": i}
                assert all(np.array_equal(h.arrays[k], arrays[k]) for k in arrays)
                n_heads += 1
            assert st.active_head(user, strict=True).version == versions[-1]
            leftovers = [p.name for p in (home / "heads").rglob("*") if p.name.startswith(".tmp")]
            assert leftovers == []
    assert n_heads == n_workers * (n_each // head_every)
    msg = (
        f"{n_workers} processes x {n_each} add_correction (+{n_heads} save_head): "
        f"{total} ids verified, {n_heads} heads verified, {wall:.2f} s wall, "
        f"{total / wall:.0f} corrections/s overall"
    )
    print("\n" + msg)
    record_property("concurrency", msg)
