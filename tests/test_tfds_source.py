"""``source = "tfds"`` from the command line, offline: tensorflow-datasets' mock data stands in
for MNIST, Fashion-MNIST and CIFAR-10 (skipped without the ``tfds`` extra)."""
from __future__ import annotations

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from nnmjax import results  # noqa: E402
from nnmjax.cli import main  # noqa: E402


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10"])
def test_run_reads_a_tfds_dataset(tmp_path, dataset):
    sets = [f"dataset='{dataset}'", "source='tfds'", "model='logreg'", "steps=2",
            "eval_every=2", "n=7", "f=2", "batch_size=5", "seeds=[1]", "baseline=false",
            "attacks=['sign_flipping']", "rules=['cwtm']"]
    with tfds.testing.mock_data(num_examples=80, policy=tfds.testing.MockPolicy.USE_CODE):
        assert main(["run", "--out", str(tmp_path), "--quiet",
                     *[a for s in sets for a in ("--set", s)]]) == 0
    record, = results.load_records(tmp_path)
    assert record["key"]["source"] == "tfds" and record["key"]["dataset"] == dataset
    assert 0.0 <= record["summary"]["max_test_acc"] <= 1.0
