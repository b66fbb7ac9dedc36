from pathlib import Path

import pytest

from grasp_lora.config import ExperimentConfig, build
from grasp_lora.files import read_yaml

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_are_valid(path):
    cfg = build(ExperimentConfig, read_yaml(path), source=str(path))
    assert cfg.target_lang in ("ar", "zh") and cfg.source_lang == "en"
    if path.name.startswith("paper-"):
        assert cfg.model == "meta-llama/Meta-Llama-3-8B-Instruct" and cfg.seeds == [42, 1337, 9001]
        assert cfg.grid == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


def test_five_examples():
    assert {p.name for p in EXAMPLES} >= {"paper-mlqa-ar.yaml", "paper-mlqa-zh.yaml", "paper-xlsum-ar.yaml",
                                          "paper-xlsum-zh.yaml", "mlqa-ar-smollm2.yaml"}
