"""The trainer on the tiny checkpoint and the synthetic data: the loss falls (full and LoRA),
resume repeats an uninterrupted run exactly, export loads and generates, bad rows are counted,
configs are checked, and two processes train through accelerate."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from sigma_core.cli import main as cli_main
from sigma_core.errors import SigmaInputError
from sigma_core.training.config import TrainConfig, config_from_dict, load_config
from tests.launch_helpers import accelerate_cpu, cpu_env, free_port, run_workers

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64  # 4 x 4 latent tokens per image: a sample is about 110 tokens


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from sigma_core.runtime import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("train_ckpt"), seed=0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from sigma_core.training.synthetic import write_parquet

    folder = tmp_path_factory.mktemp("synthetic")
    write_parquet(folder / "train-00000.parquet", 96, size=SIZE, seed=0)
    return folder


def _config(checkpoint: Path, data: Path, out: Path, **changes) -> TrainConfig:
    base = dict(
        base=str(checkpoint),
        data=(str(data),),
        output_dir=str(out),
        max_tokens=480,
        max_image_size=SIZE,
        min_image_size=SIZE,
        steps=8,
        lr=2e-3,
        min_lr=1e-4,
        warmup_steps=5,
        mixed_precision="no",
        gradient_checkpointing=False,
        trackers=(),
        save_every=1000,
        ema=0.9,
    )
    return TrainConfig(**{**base, **changes}).check()


def _trainer(cfg: TrainConfig, **kw):
    from accelerate.state import AcceleratorState, GradientState

    from sigma_core.training.trainer import Trainer

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return Trainer(cfg, **kw)


def _falls(history, first: int = 10, last: int = 20) -> float:
    """Mean loss of the last steps over that of the first ones."""
    start = sum(s.loss for s in history[:first]) / first
    end = sum(s.loss for s in history[-last:]) / last
    return end / start


@pytest.mark.parametrize(
    ("train", "bound"),
    [("gen", 0.65), ("full", 0.65), ("lora", 0.65)],  # measured 0.573, 0.581, 0.568
)
def test_loss_falls_on_synthetic_data(checkpoint, shards, tmp_path, train, bound):
    cfg = _config(checkpoint, shards, tmp_path / train, train=train, steps=100, warmup_steps=10,
                  lr=1e-2 if train == "lora" else 3e-3, lora_rank=8, ema=0.99)  # fmt: skip
    trainer = _trainer(cfg)
    history = trainer.run()
    assert len(history) == 100 and trainer.skipped.total == 0
    ratio = _falls(history)
    assert ratio < bound, f"{train}: loss ratio {ratio:.3f}"
    w_tau = trainer.pipe.model.attribute_embed.weight  # added at zero, then trained
    assert w_tau.abs().max() > 0
    if train == "lora":
        names = trainer.names
        assert names and all("lora_" in n or "attribute_embed" in n for n in names)
    elif train == "full":
        assert any(".mlp.gate_proj" in n for n in trainer.names)  # the und expert too
    else:
        assert all(any(k in n for k in ("_moe_gen", "vae2llm", "llm2vae", "time_embedder",
                                        "attribute_embed")) for n in trainer.names)  # fmt: skip


def test_resume_repeats_an_uninterrupted_run(checkpoint, shards, tmp_path):
    straight = _trainer(_config(checkpoint, shards, tmp_path / "a", steps=6, save_every=3))
    straight.run()
    first = _trainer(_config(checkpoint, shards, tmp_path / "b", steps=6, save_every=3))
    first.run(max_steps=3)
    resumed = _trainer(_config(checkpoint, shards, tmp_path / "b", steps=6, save_every=3),
                       resume="latest")  # fmt: skip
    assert resumed.step == 3
    resumed.run()
    a = tmp_path / "a" / "checkpoints" / "step-0000006"
    b = tmp_path / "b" / "checkpoints" / "step-0000006"
    for name in ("trained.safetensors", "ema.safetensors", "optimizer.safetensors"):
        ta, tb = load_file(str(a / name)), load_file(str(b / name))
        assert ta.keys() == tb.keys()
        for key in ta:
            assert torch.equal(ta[key], tb[key]), f"{name}: {key} differs after resume"
    pa = json.loads((a / "rank-0.json").read_text())["position"]
    assert pa == json.loads((b / "rank-0.json").read_text())["position"]
    assert pa["cursor"] > 0


def test_export_loads_through_from_pretrained_and_generates(checkpoint, shards, tmp_path):
    from sigma_core import Composition, Reference, Settings, SigmaPipeline
    from sigma_core.training.checkpoints import export

    for train, layout in (("gen", "training"), ("lora", "inference")):
        cfg = _config(
            checkpoint, shards, tmp_path / train, steps=3, train=train, ema=0.5, layout=layout
        )
        trainer = _trainer(cfg)
        trainer.run()
        out = export(tmp_path / train / "checkpoints" / "step-0000003", tmp_path / f"w-{train}")
        card = (out / "README.md").read_text()
        assert "intra-group mask | on" in card and "| steps | 3 |" in card
        assert f"| sequence layout | {layout} |" in card
        assert json.loads((out / "sigma_training.json").read_text())["layout"] == layout
        pipe = SigmaPipeline.from_pretrained(checkpoint, sigma_weights=out, device="cpu")
        # the weights infer in the layout they were trained in: "auto" resolves to it
        assert (pipe.planner.layout, pipe.planner.trained_layout) == (layout, layout)
        assert pipe.load_report.attribute_embed  # W_tau came with the weights
        weights = load_file(str(out / "ema.safetensors"))
        model_state = pipe.model.state_dict()
        for key, value in weights.items():
            assert torch.equal(model_state[key], value), key
        if train == "lora":  # merged: the adapted Linear differs from the base
            key = "language_model.model.layers.0.self_attn.q_proj_moe_gen.weight"
            base = load_file(str(checkpoint / "ema.safetensors"))[key]
            assert key in weights and not torch.equal(weights[key], base)
        img = Image.new("RGB", (64, 64), (200, 30, 30))
        comp = Composition("a <subject> ball <image_1> on grass", [Reference(1, img)],
                           Settings(size=(64, 64), num_timesteps=3))  # fmt: skip
        result = pipe(comp)
        assert result.images[0].size == (64, 64)
        assert result.plan.layout == layout and not result.plan.warnings
        assert result.composition.settings.layout == layout  # what ran, not "auto"
        other = "inference" if layout == "training" else "training"
        with pytest.warns(UserWarning, match=f"layout '{other}' differs from '{layout}'"):
            SigmaPipeline.from_pretrained(checkpoint, sigma_weights=out, layout=other)
        explicit = dataclasses.replace(comp, settings=comp.settings.replace(layout=other))
        assert any("trained in" in w for w in pipe.plan(explicit).warnings)


def test_bad_rows_are_skipped_and_counted(checkpoint, tmp_path):
    """A shard with broken rows still trains; each broken row is counted under its reason."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from sigma_core.training.synthetic import make_sample

    rng = __import__("random").Random(0)
    rows = []
    for i in range(12):
        prompt, refs, target = make_sample(rng, SIZE)
        images = []
        for im in [*refs, target]:
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            images.append(buf.getvalue())
        if i == 3:
            images[0] = images[0][:40]  # truncated PNG
        if i == 5:
            prompt += " and <image_9>"  # a placeholder with no image
        rows.append({"instruction_list": [[prompt]], "image_list": images})
    big = Image.new("RGB", (1024, 1024))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    rows.append({"instruction_list": [["<subject> the square <image_1>"]],
                 "image_list": [buf.getvalue(), buf.getvalue()]})  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "bad.parquet")
    cfg = _config(checkpoint, tmp_path / "bad.parquet", tmp_path / "out", steps=6,
                  max_image_size=1024, min_image_size=64, max_tokens=2048)  # fmt: skip
    trainer = _trainer(cfg.replace(max_tokens=600))
    trainer.run()
    counts = trainer.skipped.as_dict()
    text = json.dumps(counts)
    assert trainer.skipped.total >= 3
    assert "undecodable" in text and "placeholder" in text and "token budget" in text


def test_config_is_checked_field_by_field(tmp_path):
    with pytest.raises(SigmaInputError, match="unknown setting"):
        config_from_dict({"base": "x", "data": ["y"], "learning_rate": 1})
    with pytest.raises(SigmaInputError, match="'data' is required"):
        config_from_dict({"base": "x"})
    bad = {"base": "x", "data": ["y"], "lr": -1, "train": "everything", "max_tokens": 10**9,
           "ema": 2.0, "max_image_size": 100, "mask": "yes", "layout": "auto",
           "vit_dropout": 1.5}  # fmt: skip
    with pytest.raises(SigmaInputError) as info:
        config_from_dict(bad)
    names = ("lr", "train", "max_tokens", "ema", "max_image_size", "mask", "layout", "vit_dropout")
    for name in names:
        assert f"{name}:" in str(info.value)
    path = tmp_path / "c.yaml"
    path.write_text("base: x\ndata: [y]\nsteps: 5\n")
    cfg = load_config(path, {"steps": 7, "train": "lora"})
    assert (cfg.steps, cfg.train, cfg.data) == (7, "lora", ("y",))
    assert yaml.safe_load(cfg.to_yaml())["steps"] == 7
    path.write_text("base: [unclosed\n")
    with pytest.raises(SigmaInputError, match="not valid YAML"):
        load_config(path)
    path.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(SigmaInputError):
        load_config(path)


def test_config_messages_cut_and_describe_values_as_presets_do():
    """The shared field helpers: a long unknown key is cut visibly ("..."), one that does not
    print is escaped, a huge integer is described, as a preset's messages do."""
    good = {"base": "x", "data": ["y"]}
    with pytest.raises(SigmaInputError) as info:
        config_from_dict({**good, "k" * 200: 1})
    assert f"unknown setting(s) {'k' * 57}..." in str(info.value)
    with pytest.raises(SigmaInputError) as info:
        config_from_dict({**good, "a\nb": 1})
    assert "unknown setting(s) a\\nb" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(SigmaInputError, match="lr: an integer of about 400 digits"):
        config_from_dict({**good, "lr": 10**400})


def test_cli_train_prints_the_config_samples_logs_and_exports(checkpoint, shards, tmp_path, capsys):
    preset = ROOT / "presets" / "stylize_cat_brushstrokes.json"
    cfg = _config(checkpoint, shards, tmp_path / "run", steps=2, sample_every=2,
                  sample_preset=str(preset), sample_steps=2, trackers=("tensorboard",))  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(cfg.to_yaml())
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    args = ["train", "--config", str(path), "--set", "steps=2", "--set", "layout=training"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "max_tokens: 480" in out and "step 2 of 2" in out
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (written["steps"], written["layout"]) == (2, "training")
    sample = tmp_path / "run" / "samples" / "step-0000002.png"
    assert Image.open(sample).size[0] >= 64  # the validation composition, EMA weights
    assert list((tmp_path / "run").rglob("events.out.tfevents.*"))  # TensorBoard logs
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000002"
    assert cli_main(["export", str(ckpt), str(tmp_path / "w")]) == 0
    assert (tmp_path / "w" / "ema.safetensors").is_file()
    assert "| sequence layout | training |" in (tmp_path / "w" / "README.md").read_text()
    # the validation sample runs in the sequence the model trains on
    trainer = _trainer(cfg.replace(layout="training", mask=False, output_dir=str(tmp_path / "s")))
    sample = trainer.sample_composition.settings
    assert (sample.layout, sample.mask, sample.num_timesteps) == ("training", False, 2)
    assert cli_main(["train", "--config", str(path), "--set", "lr=-1"]) == 2
    assert "lr:" in capsys.readouterr().err
    assert cli_main(["export", str(tmp_path), str(tmp_path / "w2")]) == 2


@pytest.mark.slow
def test_two_processes_train_through_accelerate(checkpoint, shards, tmp_path):
    """accelerate launch, 2 CPU processes over gloo: both see their share, one checkpoint."""
    cfg = _config(checkpoint, shards, tmp_path / "ddp", steps=3, save_every=3)
    path = tmp_path / "ddp.yaml"
    path.write_text(cfg.to_yaml())
    # accelerate's CPU multi-process mode: torchrun workers over gloo, each model under DDP
    # (accelerate has no FSDP on CPU; tests/test_gpu.py and benchmarks cover FSDP on GPUs).
    result = run_workers(accelerate_cpu(["train", "--config", str(path)]), cpu_env())
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = tmp_path / "ddp" / "checkpoints" / "step-0000003"
    assert {p.name for p in ckpt.glob("rank-*.json")} == {"rank-0.json", "rank-1.json"}
    positions = [json.loads((ckpt / f"rank-{r}.json").read_text())["position"] for r in (0, 1)]
    assert all(p["cursor"] > 0 for p in positions)


@pytest.mark.slow
def test_gpu_training_benchmark_runs_dry_on_cpu(capsys):
    """benchmarks/bench_train_gpu.py's code path, small, on CPU (the real run needs a GPU)."""
    from benchmarks.bench_train_gpu import main

    result = main(["--dry-run", "--steps", "1", "--warmup", "0", "--max-tokens", "1200"])
    assert result["timed_steps"] == 1 and result["tokens_per_s"] > 0
    assert "tokens/s per GPU" in capsys.readouterr().out


@pytest.mark.slow
def test_fsdp_sharding_per_decoder_layer_matches_one_process(checkpoint):
    """FSDP2 over 2 CPU processes (gloo), each decoder layer a unit: one step equals the
    unsharded step, and the trainer's gathering returns whole weights and EMA."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = ROOT / "tests" / "fsdp_check.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(free_port()), str(script), str(checkpoint)]  # fmt: skip
    result = run_workers(cmd, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "FSDP OK" in result.stdout


def test_ctrl_c_stops_after_the_step_with_a_checkpoint(checkpoint, shards, tmp_path):
    import signal

    trainer = _trainer(_config(checkpoint, shards, tmp_path / "run", steps=8))
    step = trainer.train_step

    def step_then_ctrl_c():
        stats = step()
        if stats.step == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return stats

    trainer.train_step = step_then_ctrl_c
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN under a shell's `cmd &`
    history = trainer.run()
    assert trainer.interrupted and len(history) == 2 and trainer.step == 2
    assert (tmp_path / "run" / "checkpoints" / "step-0000002" / "state.json").is_file()
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_out_of_memory_and_unusable_data_get_clear_messages(checkpoint, shards, tmp_path):
    from sigma_core.training.trainer import TrainingOutOfMemoryError

    trainer = _trainer(_config(checkpoint, shards, tmp_path / "oom", steps=3))

    def no_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    trainer.train_step = no_memory
    with pytest.raises(TrainingOutOfMemoryError, match="lower max_tokens") as info:
        trainer.run()
    assert "training step 1" in str(info.value)
    tiny = _trainer(_config(checkpoint, shards, tmp_path / "tiny", steps=2, max_tokens=40))
    with pytest.raises(SigmaInputError, match=r"no row fits .*over the token budget"):
        tiny.run()
