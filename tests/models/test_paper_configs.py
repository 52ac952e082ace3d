"""Every paper recipe in configs/ runs two training steps at its quick size (slow: each
compiles a training step), the distillation recipes from a quick teacher trained first."""

import importlib.util
import json
import pathlib

import pytest

from bnn_jax.train import config as config_lib
from bnn_jax.train import loop

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
PLAIN = [("reste", "model=resnet20"), ("reste", "model=vgg_small"), ("reste", "model=resnet18"),
         ("bireal", ""), ("xnor", ""), ("xnor", "bwn"), ("irnet", ""),
         ("irnet", "model=irnet_resnet18"), ("irnet", "model=vgg_small"), ("biper", ""),
         ("quicknet", ""),
         ("aqt_resnet50", ""), ("teachers", "")]
DISTILLED = [("reactnet", ""), ("pokebnn", ""), ("real_to_binary", "")]


def get_config(name, arg):
    spec = importlib.util.spec_from_file_location(name, CONFIGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(",".join(filter(None, ["quick", arg])))


def _two_steps(config, workdir):
    config.checkpoint_every = 2
    config_lib.validate(config)
    config.tensorboard = False
    result = loop.run(config, str(workdir))
    lines = [json.loads(s) for s in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines if m["split"] == "train"] == [1, 2]
    assert result["step"] == 2 and result["last_checkpoint"] == 2
    assert "## Cost (per example" in (workdir / "summary.md").read_text()
    return result


@pytest.mark.slow
@pytest.mark.parametrize("name,arg", PLAIN, ids=[f"{n}:{a}" for n, a in PLAIN])
def test_quick_recipe_runs_two_steps(name, arg, tmp_path):
    _two_steps(get_config(name, arg), tmp_path / "run")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("teacher") / "run"
    _two_steps(get_config("teachers", ""), workdir)
    return workdir


@pytest.mark.slow
@pytest.mark.parametrize("name,arg", DISTILLED, ids=[n for n, _ in DISTILLED])
def test_quick_distillation_recipe_runs_two_steps(name, arg, teacher, tmp_path):
    config = get_config(name, ",".join(filter(None, [arg, f"teacher={teacher}"])))
    assert config.kd.enabled and config.kd.teacher_workdir == str(teacher)
    _two_steps(config, tmp_path / "run")
