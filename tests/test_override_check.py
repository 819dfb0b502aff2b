"""An added config key that nothing reads (``+targetclass=cat``) is refused, naming the closest keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from cnnlab.errors import ConfigValueError
from cnnlab.utils.config import register_resolvers
from cnnlab.utils.override_check import refuse_unread_additions
from conftest import CONF_DIR, ROOT

register_resolvers()


def check(name: str, *overrides: str) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with its Hydra node, as the callback gets it, and check it."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        config = compose(name, overrides=list(overrides), return_hydra_config=True)
        refuse_unread_additions(config)
    return config


def test_a_mistyped_top_level_option_is_refused_with_the_close_keys():
    with pytest.raises(ConfigValueError) as refused:
        check("visualize", "ckpt_path=x.ckpt", "image=7", "+targetclass=cat")
    assert str(refused.value) == (
        "+targetclass=cat adds a key that nothing reads (no option of this task, and no constructor is given it); "
        "did you mean target_class=cat? (the top-level keys: cam_alpha, cam_layer, channels, ckpt_path, columns, "
        "device, image, layer, paths, split, target_class, task_name; nothing was run)")


@pytest.mark.parametrize("override", ["+benchmark.round=2", "++benchmark.round=2"])
def test_a_mistyped_key_of_a_plain_section_is_refused(override: str):
    with pytest.raises(ConfigValueError) as refused:
        check("benchmark", override)
    assert str(refused.value).startswith(f"{override} adds a key that nothing reads")
    assert "did you mean benchmark.rounds=2? (the keys in benchmark: command, epoch, paired_steps," in str(refused.value)


@pytest.mark.parametrize(("name", "override", "part"), [
    ("train", "+foo=1", "no key there is close to foo. (the top-level keys: callbacks, ckpt_path, classifier,"),
    ("train", "+bencmark.rounds=2", "no key there is close to bencmark."),  # only benchmark's config has one
    ("benchmark", "+benchmark={round: 2}", "adds the key benchmark.round that nothing reads"),
    ("train", "+classifier.flip=true", "did you mean classifier.flip_tta=true?"),
    ("train", "+paths.foo=1", "(the keys in paths: cache_dir, data_dir, log_dir, output_dir, root_dir;"),
    ("train", "+scheduler.T_max=3", "(the keys in scheduler: interval, scheduler;"),  # its constructor is a level down
    ("predict", "+data.root=/x", "no key there is close to data."),  # predict reads files, not a data module
])
def test_other_unread_additions_are_refused(name: str, override: str, part: str):
    required = {"visualize": ["ckpt_path=x.ckpt", "image=7"], "predict": ["ckpt_path=x.ckpt", "inputs=x"]}.get(name, [])
    with pytest.raises(ConfigValueError, match="adds .* that nothing reads") as refused:
        check(name, *required, override)
    assert part in str(refused.value)


@pytest.mark.parametrize(("name", "overrides"), [
    ("train", ["+callbacks.stop={_target_: lightning.pytorch.callbacks.EarlyStopping, monitor: val/loss}"]),
    ("train", ["+callbacks.ema._target_=lightning.pytorch.callbacks.EMAWeightAveraging", "+callbacks.ema.decay=0.9"]),
    ("eval", ["ckpt_path=x.ckpt", "+callbacks.stop={_target_: lightning.pytorch.callbacks.EarlyStopping}"]),
    ("train", ["+optimizer.betas=[0.8,0.99]", "+optimizer.amsgrad=true", "++data.augment.rotation_degrees=5"]),
    ("train", ["++trainer.max_epochs=3", "+trainer.enable_checkpointing=false"]),  # arguments their constructors take
    ("train", ["+logger.tensorboard.flush_secs=30"]),  # TensorBoardLogger hands **kwargs on to its SummaryWriter
    ("train", ["+model._convert_=all"]),  # Hydra's own instantiate option, not an argument
    ("train", ["+hydra.launcher.foo=1", "++hydra.job.env_set.FOO=1"]),  # Hydra's own
    ("train", ["model=torchvision_ft", "+model/normalize=cifar10"]),  # a config group choice, not a key
    ("train", ["experiment=tutorial", "++seed=3", "++classifier.flip_tta=true"]),  # ++ over keys that are there
    ("visualize", ["ckpt_path=x.ckpt", "image=7", "+target_class=cat"]),  # the key is there (null): Hydra takes +
    ("eval", ["ckpt_path=x.ckpt", "+data.root=/x", "+data.eval_batch_size=50"]),  # eval checks these itself
    ("visualize", ["ckpt_path=x.ckpt", "image=7", "+data.root=/x"]),  # as eval does
])
def test_additions_something_reads_are_allowed(name: str, overrides: list[str]):
    check(name, *overrides)


@pytest.mark.parametrize(("override", "part"), [
    ("+trainer.max_epoch=1", "lightning.pytorch.trainer.Trainer has no argument max_epoch; did you mean "
                             "trainer.max_epochs=1 or"),
    ("+optimizer.beta=[0.8,0.99]", "torch.optim.Adam has no argument beta; did you mean optimizer.betas=[0.8,0.99]? "
                                   "(its arguments: amsgrad, betas,"),
    ("+model.dropuot=0.2", "cnnlab.models.simple_cnn.SimpleCNN has no argument dropuot; did you mean model.dropout=0.2?"),
    ("+callbacks.stop={_target_: lightning.pytorch.callbacks.EarlyStopping, patiense: 3}",
     "adds the key callbacks.stop.patiense that nothing reads: lightning.pytorch.callbacks.EarlyStopping has no "
     "argument patiense; did you mean callbacks.stop.patience?"),
])
def test_an_added_argument_the_constructor_lacks_is_refused_before_the_run(override: str, part: str):
    with pytest.raises(ConfigValueError, match="adds .* that nothing reads") as refused:
        check("train", override)
    assert part in str(refused.value)
    assert str(refused.value).endswith("nothing was run)")


def test_the_constructor_still_judges_what_the_check_lets_through(tmp_path: Path):
    # A key deeper in an argument (a dict the constructor takes whole) is not judged by the check.
    config = check("train", "+trainer.plugins.foo=1")
    with pytest.raises(InstantiationException, match="invalid type for plugin foo"):
        instantiate(config.trainer, default_root_dir=str(tmp_path))


def test_a_script_refuses_it_in_one_line_before_writing_anything(tmp_path: Path):
    run_dir = tmp_path / "run"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "visualize.py"), "ckpt_path=missing.ckpt", "image=7",
                             "+targetclass=cat", f"hydra.run.dir={run_dir}"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("ConfigValueError: +targetclass=cat adds a key that nothing reads")
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_the_summary_script_refuses_it_too(tmp_path: Path):
    # summary.yaml does not compose hydra/default.yaml: it registers the check itself.
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "summary.py"), "+input_siz=48"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert "did you mean input_size=48?" in result.stderr and "parameters" not in result.stdout


def test_each_multirun_job_is_checked_and_the_sweep_stops_before_its_first_task(tmp_path: Path):
    sweep = tmp_path / "sweep"
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), "-m", "data=synthetic", "+foo=1,2",
                             f"hydra.sweep.dir={sweep}"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("ConfigValueError: +foo=1 adds a key that nothing reads")
    # What any failed start leaves: the sweep's record, the first job's .hydra/ and log; no second job.
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "multirun.yaml"]
    assert sorted(p.name for p in (sweep / "0").iterdir()) == [".hydra", "train.log"]
