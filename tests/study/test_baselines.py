import re
from collections import Counter
from pathlib import Path

import pytest

from study.baselines import BASELINES, DATASETS, rows

PAPER = Path(__file__).resolve().parents[2].parent / "shared" / "paper" / "take-a-shortcut-back-neurips2024.txt"


def test_row_counts_per_table():
    # Counted by hand in the paper: Table 1 has 12 rows; Table 2 has 24 CIFAR-10 rows and 17 CIFAR-100 rows;
    # Table 3 has 15; Table 4 has 6.
    assert Counter(b.table for b in BASELINES) == {1: 12, 2: 41, 3: 15, 4: 6}
    assert len(rows("cifar10", table=2)) == 24 and len(rows("cifar100", table=2)) == 17


@pytest.mark.parametrize("table,dataset,method,arch,t,acc,std", [
    (1, "cifar100", "Vanilla Training", "resnet34", 4, 0.6998, None),
    (2, "cifar100", "Evolutionary Training", "resnet19", 2, 0.7779, 0.0008),
    (2, "cifar10", "Diet-SNN", "resnet20", 10, 0.9254, None),
    (2, "cifar100", "T2FSNN", "vgg16", 680, 0.6880, None),
    (3, "imagenet", "Evolutionary Training", "resnet34", 4, 0.6814, 0.0015),
    (4, "cifar10-dvs", "Evolutionary Training", "resnet18", 10, 0.8330, 0.0010),
])
def test_spot_values(table, dataset, method, arch, t, acc, std):
    (b,) = [b for b in rows(dataset, table=table) if b.method == method and b.architecture == arch and b.timesteps == t]
    assert b.accuracy == pytest.approx(acc) and (b.std == pytest.approx(std) if std else b.std is None)


def test_row_properties():
    assert all(0 < b.accuracy < 1 for b in BASELINES)
    assert len({b.run_name() for b in BASELINES}) == len(BASELINES)
    assert rows("digits") == () and all(b.dataset == "cifar10" for b in rows("cifar10"))
    assert set(DATASETS) == {"cifar10", "cifar100", "imagenet", "cifar10-dvs"}
    tags = Counter(b.method_tag for b in BASELINES)
    assert tags["vanilla"] == 4 and tags["shortcut"] == tags["evolutionary"] == 4 + 8 + 2 + 1  # tables 1, 2, 3, 4


def test_accuracies_are_exactly_the_papers():
    """Every 'NN.NN%' that ends a line of the tables' region, with its ± std, is one row of BASELINES."""
    if not PAPER.exists():
        pytest.skip(f"{PAPER} not present")
    text = PAPER.read_text()
    region = text[text.index("Table 1: Ablation study"):text.index("RecDis-SNN even with 4 timesteps")]
    found = Counter()
    for line in region.splitlines():
        # the text extraction glued Table 2's last CIFAR-10 row to its "CIFAR-100" label
        for m in re.finditer(r"(\d\d\.\d\d)%(?: ±(\d\.\d\d))?(?=\s*$|CIFAR-100)", line):
            found[(m.group(1), m.group(2))] += 1
    ours = Counter((f"{b.accuracy * 100:.2f}", None if b.std is None else f"{b.std * 100:.2f}") for b in BASELINES)
    assert found == ours
