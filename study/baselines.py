"""The paper's reference results (Guo et al., NeurIPS 2024, Tables 1-4), as data.

Every row of Tables 1-4, other methods' rows included: top-1 test accuracy as a fraction
(the same scale as the trials' ``test_acc``), with the ± std over 3 runs where the paper
gives one. Table 1 is the ablation on CIFAR-100 (section 5.1); Table 2 compares on
CIFAR-10 and CIFAR-100, Table 3 on ImageNet, Table 4 on CIFAR10-DVS. Architecture names
are lower-cased as in :data:`snn.registry.ARCHS` where the project builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from search_spaces import paper_setting, searched
from snn.config import METHODS, PAPER_NAMES, meaningful

__all__ = ["BASELINES", "DATASETS", "Baseline", "rows"]

_OURS = {paper: method for method, paper in PAPER_NAMES.items()}  # the paper's name -> the project's


@dataclass(frozen=True)
class Baseline:
    """One row of the paper's Tables 1-4."""

    table: int
    dataset: str
    method: str
    citation: str
    type: str
    architecture: str
    timesteps: int
    accuracy: float  # fraction in [0, 1]
    std: float | None = None  # fraction, where the paper gives ± std

    @property
    def ours(self) -> bool:
        """True for the paper's own rows (vanilla, shortcut and evolutionary training)."""
        return self.method in _OURS

    @property
    def method_tag(self) -> str:
        """The project's method vocabulary: vanilla, shortcut, evolutionary, or other."""
        return _OURS.get(self.method, "other")

    def setting(self) -> dict[str, Any]:
        """The row's setting, under the names of a trial's config (its MLflow params).

        The paper's own rows carry its full setting (:data:`snn.config.METHODS`: λ₀, the
        schedule and the branches of Eq. 10, the triangle surrogate of Eq. 4 with its default
        parameter, T, the architecture, the dataset), without what the setting ignores
        (:func:`snn.config.meaningful`: no λ₀ for vanilla training), so a row lands on the
        same axes as the trials. Other methods' rows carry what the paper gives: the
        architecture, T and the dataset.
        """
        common = {"dataset": self.dataset, "arch": self.architecture, "timesteps": self.timesteps,
                  "method": self.method_tag}
        if not self.ours:
            return common
        method = METHODS[self.method_tag]
        return meaningful({**common, **method, **paper_setting(None, [d for d in searched() if d not in method])})

    def run_name(self) -> str:
        """A stable name, unique over all rows, used for the row's MLflow run."""
        return f"T{self.table} {self.dataset} {self.architecture} T={self.timesteps} {self.method}"


# table | dataset | method | citation | type | architecture | timesteps | accuracy % | std %
_ROWS = """
1|cifar100|Vanilla Training||SNN training|resnet18|2|71.42|
1|cifar100|Shortcut Back-propagation||SNN training|resnet18|2|73.68|
1|cifar100|Evolutionary Training||SNN training|resnet18|2|74.02|
1|cifar100|Vanilla Training||SNN training|resnet18|4|72.22|
1|cifar100|Shortcut Back-propagation||SNN training|resnet18|4|74.78|
1|cifar100|Evolutionary Training||SNN training|resnet18|4|74.83|
1|cifar100|Vanilla Training||SNN training|resnet34|2|69.82|
1|cifar100|Shortcut Back-propagation||SNN training|resnet34|2|74.06|
1|cifar100|Evolutionary Training||SNN training|resnet34|2|74.17|
1|cifar100|Vanilla Training||SNN training|resnet34|4|69.98|
1|cifar100|Shortcut Back-propagation||SNN training|resnet34|4|75.67|
1|cifar100|Evolutionary Training||SNN training|resnet34|4|75.81|
2|cifar10|TL|Wu et al. (2021a)|Tandem Learning|cifarnet|8|89.04|
2|cifar10|PTL|Wu et al. (2021b)|Tandem Learning|vgg11|16|91.24|
2|cifar10|PLIF|Fang et al. (2021b)|SNN training|plifnet|8|93.50|
2|cifar10|DSR|Meng et al. (2022)|SNN training|resnet18|20|95.40|
2|cifar10|KDSNN|Xu et al. (2023)|SNN training|resnet18|4|93.41|
2|cifar10|RecDis-SNN|Guo et al. (2022c)|SNN training|resnet19|2|93.64|
2|cifar10|Diet-SNN|Rathi & Roy (2020)|SNN training|resnet20|5|91.78|
2|cifar10|Diet-SNN|Rathi & Roy (2020)|SNN training|resnet20|10|92.54|
2|cifar10|Dspike|Li et al. (2021b)|SNN training|resnet20|2|93.13|
2|cifar10|Dspike|Li et al. (2021b)|SNN training|resnet20|4|93.66|
2|cifar10|STBP-tdBN|Zheng et al. (2021)|SNN training|resnet19|2|92.34|
2|cifar10|STBP-tdBN|Zheng et al. (2021)|SNN training|resnet19|4|92.92|
2|cifar10|TET|Deng et al. (2022)|SNN training|resnet19|2|94.16|
2|cifar10|TET|Deng et al. (2022)|SNN training|resnet19|4|94.44|
2|cifar10|Real Spike|Guo et al. (2022d)|SNN training|resnet19|2|95.31|
2|cifar10|Real Spike|Guo et al. (2022d)|SNN training|resnet20|4|91.89|
2|cifar10|Shortcut Back-propagation||SNN training|resnet18|2|93.89|0.11
2|cifar10|Shortcut Back-propagation||SNN training|resnet18|4|94.30|0.09
2|cifar10|Shortcut Back-propagation||SNN training|resnet19|1|94.47|0.09
2|cifar10|Shortcut Back-propagation||SNN training|resnet19|2|95.19|0.10
2|cifar10|Evolutionary Training||SNN training|resnet18|2|93.92|0.08
2|cifar10|Evolutionary Training||SNN training|resnet18|4|94.46|0.11
2|cifar10|Evolutionary Training||SNN training|resnet19|1|94.81|0.13
2|cifar10|Evolutionary Training||SNN training|resnet19|2|95.36|0.10
2|cifar100|T2FSNN|Park et al. (2020)|ANN2SNN|vgg16|680|68.80|
2|cifar100|Real Spike|Guo et al. (2022d)|SNN training|resnet20|5|66.60|
2|cifar100|LTL|Yang et al. (2022)|Tandem Learning|resnet20|31|76.08|
2|cifar100|Diet-SNN|Rathi & Roy (2020)|SNN training|resnet20|5|64.07|
2|cifar100|RecDis-SNN|Guo et al. (2022c)|SNN training|resnet19|4|74.10|
2|cifar100|Dspike|Li et al. (2021b)|SNN training|resnet20|2|71.68|
2|cifar100|Dspike|Li et al. (2021b)|SNN training|resnet20|4|73.35|
2|cifar100|TET|Deng et al. (2022)|SNN training|resnet19|2|72.87|
2|cifar100|TET|Deng et al. (2022)|SNN training|resnet19|4|74.47|
2|cifar100|Shortcut Back-propagation||SNN training|resnet18|2|73.68|0.10
2|cifar100|Shortcut Back-propagation||SNN training|resnet18|4|74.78|0.08
2|cifar100|Shortcut Back-propagation||SNN training|resnet19|1|75.75|0.10
2|cifar100|Shortcut Back-propagation||SNN training|resnet19|2|77.56|0.13
2|cifar100|Evolutionary Training||SNN training|resnet18|2|74.02|0.09
2|cifar100|Evolutionary Training||SNN training|resnet18|4|74.83|0.11
2|cifar100|Evolutionary Training||SNN training|resnet19|1|75.82|0.12
2|cifar100|Evolutionary Training||SNN training|resnet19|2|77.79|0.08
3|imagenet|TET|Deng et al. (2022)|SNN training|resnet34|6|64.79|
3|imagenet|RecDis-SNN|Guo et al. (2022c)|SNN training|resnet34|6|67.33|
3|imagenet|GLIF|Yao et al. (2022)|SNN training|resnet34|4|67.52|
3|imagenet|DSR|Meng et al. (2022)|SNN training|resnet18|50|67.74|
3|imagenet|MS-ResNet|Hu et al. (2023)|SNN training|resnet18|6|63.10|
3|imagenet|MPBN|Guo et al. (2023b)|SNN training|resnet18|4|63.14|
3|imagenet|MPBN|Guo et al. (2023b)|SNN training|resnet34|4|64.71|
3|imagenet|Real Spike|Guo et al. (2022d)|SNN training|resnet18|4|63.68|
3|imagenet|Real Spike|Guo et al. (2022d)|SNN training|resnet34|4|67.69|
3|imagenet|SEW ResNet|Fang et al. (2021a)|SNN training|resnet18|4|63.18|
3|imagenet|SEW ResNet|Fang et al. (2021a)|SNN training|resnet34|4|67.04|
3|imagenet|Shortcut Back-propagation||SNN training|resnet18|4|64.47|0.21
3|imagenet|Shortcut Back-propagation||SNN training|resnet34|4|67.90|0.17
3|imagenet|Evolutionary Training||SNN training|resnet18|4|65.12|0.18
3|imagenet|Evolutionary Training||SNN training|resnet34|4|68.14|0.15
4|cifar10-dvs|STBP-tdBN|Zheng et al. (2021)|SNN training|resnet19|10|67.80|
4|cifar10-dvs|RecDis-SNN|Guo et al. (2022c)|SNN training|resnet19|10|72.42|
4|cifar10-dvs|Real Spike|Guo et al. (2022d)|SNN training|resnet19|10|72.85|
4|cifar10-dvs|Dspike|Li et al. (2021b)|SNN training|resnet18|10|75.40|
4|cifar10-dvs|Shortcut Back-propagation||SNN training|resnet18|10|82.00|0.10
4|cifar10-dvs|Evolutionary Training||SNN training|resnet18|10|83.30|0.10
"""


def _parse(text: str) -> tuple[Baseline, ...]:
    out = []
    for line in text.strip().splitlines():
        table, dataset, method, citation, kind, arch, t, acc, std = line.split("|")
        out.append(Baseline(int(table), dataset, method, citation, kind, arch, int(t), round(float(acc) / 100, 6),
                            round(float(std) / 100, 6) if std else None))
    return tuple(out)


BASELINES: tuple[Baseline, ...] = _parse(_ROWS)
"""Every row of Tables 1-4."""

DATASETS: tuple[str, ...] = tuple(dict.fromkeys(b.dataset for b in BASELINES))
"""Datasets the paper reports on."""


def rows(dataset: str | None = None, *, table: int | None = None) -> tuple[Baseline, ...]:
    """The rows for ``dataset`` (all for None) and ``table`` (all for None); () for other datasets."""
    return tuple(b for b in BASELINES if (dataset is None or b.dataset == dataset)
                 and (table is None or b.table == table))
